"""ProbabilisticSpatialTransformer: deterministic limit, reparameterised gradients, KL, marginalisation."""

import copy
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Gamma, MultivariateNormal, Normal, kl_divergence
from torch.func import functional_call

import torchstn as stn
from torchstn.nn import total_kl

DISTRIBUTIONS = ["student-t", "gaussian"]


def _loc(in_features: int, width: int = 6) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh())


def _pstn(transform="affine", in_features=64, **kw) -> stn.ProbabilisticSpatialTransformer:
    torch.manual_seed(0)
    pst = stn.ProbabilisticSpatialTransformer(transform, _loc(in_features), **kw)
    with torch.no_grad():  # a mean that depends on the input
        pst.regressor.weight.normal_(0, 0.05)
    return pst


def _deterministic_twin(pst: stn.ProbabilisticSpatialTransformer) -> stn.SpatialTransformer:
    """A SpatialTransformer with the same localisation net and mean regressor."""
    det = stn.SpatialTransformer(pst.transform, pst.localization, pst.output_size)
    det.regressor.load_state_dict(pst.regressor.state_dict())
    return det.to(pst.regressor.weight.dtype)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_zero_variance_equals_the_deterministic_transformer(distribution, dtype, atol):
    pst = _pstn(distribution=distribution, samples=3).to(dtype)
    with torch.no_grad():  # softplus(-1e4) == 0 exactly: every sample is the mean
        pst.variance_regressor.weight.zero_()
        pst.variance_regressor.bias.fill_(-1e4)
    x = torch.rand(2, 1, 8, 8, dtype=dtype)
    out = pst(x)
    expected = _deterministic_twin(pst)(x)
    assert out.shape == (6, 1, 8, 8) and out.dtype == dtype
    # θ is exactly the mean; the images agree to rounding (a batch of S*B grids may round
    # differently from a batch of B)
    torch.testing.assert_close(pst.last_params, pst.last_mean.repeat(3, 1), atol=0, rtol=0)
    for s in range(3):
        torch.testing.assert_close(out[2 * s : 2 * s + 2], expected, atol=atol, rtol=0)


def test_test_time_mean_is_one_deterministic_warp():
    pst = _pstn(test_samples="mean", init_scale=0.3)
    x = torch.rand(4, 1, 8, 8)
    pst.eval()
    out = pst(x)
    assert pst.last_samples == 1
    torch.testing.assert_close(out, _deterministic_twin(pst)(x), atol=1e-6, rtol=0)
    pst.train()
    assert pst(x).shape[0] == 4 * pst.samples


def test_samples_are_sample_major_and_spread_as_configured():
    pst = _pstn(distribution="gaussian", samples=5, init_scale=0.2)
    x = torch.rand(3, 1, 8, 8)
    out = pst(x)
    theta = pst.last_params
    assert theta.shape == (15, 6)
    for s in range(5):  # row s*B + b is input b warped by its own sample
        torch.testing.assert_close(out[3 * s : 3 * s + 3], pst.transform_input(x, theta[3 * s : 3 * s + 3]))
    torch.testing.assert_close(pst.last_scale, torch.full((3, 6), 0.2), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("distribution", "alpha", "expected_std"),
    # student-t with 2α = 6 degrees of freedom: std = scale * sqrt(6 / 4)
    [("gaussian", 1.0, 0.2), ("student-t", 3.0, 0.2 * math.sqrt(1.5))],
)
def test_sample_spread_matches_the_distribution(distribution, alpha, expected_std):
    torch.manual_seed(0)
    pst = stn.ProbabilisticSpatialTransformer(
        "translation", _loc(4), samples=20000, distribution=distribution, prior_alpha=alpha, init_scale=0.2
    )
    with torch.no_grad():
        pst(torch.rand(1, 1, 2, 2))
    theta = pst.last_params
    assert abs(float(theta.mean())) < 0.01
    assert abs(float(theta.std()) / expected_std - 1) < 0.05


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_gradients_reach_mean_and_variance_heads(distribution):
    dtype = torch.float64
    pst = _pstn(distribution=distribution, in_features=16, samples=2, init_scale=0.1).to(dtype)
    with torch.no_grad():
        pst.variance_regressor.weight.normal_(0, 0.3)
    x = torch.rand(2, 1, 4, 4, dtype=dtype)
    names = ["regressor.weight", "regressor.bias", "variance_regressor.weight", "variance_regressor.bias"]
    params = {n: p.detach().clone().requires_grad_() for n, p in pst.named_parameters() if n in names}

    def run(*values):
        torch.manual_seed(1)  # the same noise ε at every evaluation: θ = μ + scale · ε is smooth in both heads
        out = functional_call(pst, dict(zip(names, values)), (x,))
        return out, pst.last_kl

    assert torch.autograd.gradcheck(run, tuple(params[n] for n in names), eps=1e-6, atol=1e-5)
    out, kl = run(*(params[n] for n in names))
    (out.square().sum() + kl).backward()
    for n in names:
        assert params[n].grad.abs().sum() > 0, n


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_low_precision_and_vmap_draw_the_same_noise(distribution):
    """Under bf16 autocast and in a bfloat16 module the noise is drawn in float32 (torch has no
    CPU gamma sampler in bfloat16) and cast: the same θ as float32 to bfloat16's rounding;
    under vmap(randomness="different") each model of a stack draws its own."""
    pst = _pstn(distribution=distribution, in_features=16, samples=3, init_scale=0.2)
    x = torch.rand(2, 1, 4, 4)
    torch.manual_seed(5)
    pst(x)
    expected = pst.last_params.detach()
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pst(x)
    (out.sum() + pst.kl()).backward()
    torch.testing.assert_close(pst.last_params.float(), expected, atol=0.02, rtol=0.02)
    # the KL in float32 (a sum over the parameters, in bfloat16 1.2% off: 912 against 901)
    assert pst.last_kl.dtype == torch.float32
    torch.testing.assert_close(pst.last_kl, pst._kl(pst.last_mean.float(), pst.predict_distribution(x)[1].float()),
                               atol=0, rtol=1e-2)
    low = _pstn(distribution=distribution, in_features=16, samples=3, init_scale=0.2)
    low.load_state_dict(pst.state_dict())
    torch.manual_seed(5)
    assert low.bfloat16()(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(low.last_params.float(), expected, atol=0.05, rtol=0.05)
    stacked = torch.func.stack_module_state([pst, pst])
    draws = torch.func.vmap(lambda p, b: functional_call(pst, (p, b), (x,)), randomness="different")(*stacked)
    assert draws.shape == (2, 6, 1, 4, 4) and not torch.equal(draws[0], draws[1])


def test_student_t_kl_is_the_kl_between_gammas():
    pst = _pstn(samples=2, prior_alpha=2.0, prior_beta=0.5)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        pst.variance_regressor.weight.normal_(0, 0.5)
        pst(x)
        _, beta = pst.predict_distribution(x)
    expected = kl_divergence(Gamma(torch.full_like(beta, 2.0), beta), Gamma(torch.tensor(2.0), torch.tensor(0.5)))
    torch.testing.assert_close(pst.last_kl, expected.sum(1).mean())
    torch.testing.assert_close(pst.last_scale, (beta / 2.0).sqrt())
    # posterior equal to the prior: KL 0
    with torch.no_grad():
        pst.variance_regressor.weight.zero_()
        pst.variance_regressor.bias.fill_(math.log(math.expm1(0.5)))
        pst(x)
    torch.testing.assert_close(pst.last_kl, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_gaussian_kl_is_to_a_prior_around_the_identity():
    pst = _pstn(distribution="gaussian", prior_sigma=0.3, init_scale=0.1)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        pst(x)
    mean, sigma = pst.last_mean, pst.last_scale
    expected = kl_divergence(Normal(mean, sigma), Normal(stn.Affine().identity(), 0.3))
    torch.testing.assert_close(pst.last_kl, expected.sum(1).mean())
    # per parameter of θ, as the authors' code averages the KL (P times theirs until 2026-12-04); read
    # under no_grad as the pass ran (outside it, kl() warns that the term adds nothing to the gradients)
    with torch.no_grad():
        torch.testing.assert_close(pst.kl(), pst.kl_weight * pst.last_kl / stn.Affine().num_params)


def test_gaussian_kl_to_a_full_prior_covariance():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    cov = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    pst = _pstn(distribution="gaussian", prior_covariance=cov, init_scale=0.1)
    with torch.no_grad():
        pst.variance_regressor.weight.normal_(0, 0.5)
        pst(torch.rand(3, 1, 8, 8))
    mean, sigma = pst.last_mean.double(), pst.last_scale.double()
    identity = stn.Affine().identity(dtype=torch.float64)
    expected = kl_divergence(MultivariateNormal(mean, torch.diag_embed(sigma**2)), MultivariateNormal(identity, cov))
    torch.testing.assert_close(pst.last_kl.double(), expected.mean(), atol=1e-4, rtol=1e-5)
    # σ_p² I as a full covariance gives the diagonal prior's KL
    plain = _pstn(distribution="gaussian", prior_sigma=0.3)
    full = _pstn(distribution="gaussian", prior_covariance=0.09 * torch.eye(6))
    x = torch.rand(2, 1, 8, 8)
    for module in (plain, full):
        torch.manual_seed(1)
        module(x)
    torch.testing.assert_close(full.last_kl, plain.last_kl)
    # stored as buffers (moved by .to(), saved in the state dict); absent without a full prior
    assert set(full.state_dict()) - set(plain.state_dict()) == {"prior_precision", "prior_logdet"}
    assert plain.prior_precision is None and "prior_covariance=full" in repr(full)


def test_cpab_prior_in_a_pstn_on_signals():
    torch.manual_seed(0)
    cpab = stn.CPAB1D(8)
    loc = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32, 8), nn.Tanh())
    cov = cpab.prior_covariance(length_scale=0.3, variance=0.5)
    pst = stn.ProbabilisticSpatialTransformer(cpab, loc, samples=3, distribution="gaussian", prior_covariance=cov)
    x = torch.rand(4, 2, 32)
    out = pst(x)
    assert out.shape == (12, 2, 32) and pst.last_params.shape == (12, 7)
    expected = kl_divergence(
        MultivariateNormal(pst.last_mean.double(), torch.diag_embed(pst.last_scale.double() ** 2)),
        MultivariateNormal(torch.zeros(7, dtype=torch.float64), cov.double()),
    )
    torch.testing.assert_close(pst.last_kl.double(), expected.mean(), atol=1e-4, rtol=1e-5)
    (pst.marginalize(out.mean(-1)).sum() + pst.kl()).backward()
    assert pst.regressor.bias.grad.abs().sum() > 0 and pst.variance_regressor.bias.grad.abs().sum() > 0


def test_bad_prior_covariance():
    with pytest.raises(ValueError, match="prior_covariance needs distribution='gaussian'"):
        _pstn(prior_covariance=torch.eye(6))
    with pytest.raises(ValueError, match=r"prior_covariance must have shape \(6, 6\), got \(5, 5\)"):
        _pstn(distribution="gaussian", prior_covariance=torch.eye(5))
    with pytest.raises(ValueError, match="prior_covariance must be a finite symmetric matrix"):
        _pstn(distribution="gaussian", prior_covariance=torch.eye(6) + torch.ones(6, 6).triu(1))
    with pytest.raises(ValueError, match="prior_covariance must be positive definite"):
        _pstn(distribution="gaussian", prior_covariance=torch.diag(torch.tensor([1.0, 1, 1, 1, 1, -1])))
    cpab = stn.CPAB1D(8)  # a long length scale: the kernel is nearly singular (condition number ~1e8)
    with pytest.raises(ValueError, match="prior_covariance is too ill-conditioned .* add a small multiple"):
        stn.ProbabilisticSpatialTransformer(
            cpab, _loc(8), distribution="gaussian", prior_covariance=cpab.prior_covariance(length_scale=1.0)
        )


def test_marginalize_averages_probabilities_in_evaluation_and_log_probabilities_in_training():
    """The authors' code (and the ELBO): in training the mean of the samples' log-probabilities,
    whose nll_loss is the mean of their negative log-likelihoods; at test time the log of the
    averaged probabilities. Training took the latter until 2026-12-04."""
    pst = _pstn(samples=2, test_samples=2)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # p = (1/4, 3/4) and (3/4, 1/4)
    pst.eval()
    pst(torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(pst.marginalize(logits), torch.log(torch.tensor([[0.5, 0.5]])))
    pst.train()
    pst(torch.rand(1, 1, 8, 8))
    elbo_term = torch.log(torch.tensor([[3 / 16, 3 / 16]])) / 2  # (log 1/4 + log 3/4) / 2 for either class
    torch.testing.assert_close(pst.marginalize(logits), elbo_term)
    y = torch.tensor([1])
    per_sample = F.cross_entropy(logits, y.repeat(2), reduction="none").mean()
    torch.testing.assert_close(F.nll_loss(pst.marginalize(logits), y), per_sample)
    with pytest.raises(ValueError, match="S=2"):
        pst.marginalize(torch.zeros(3, 2))
    # a multiple of S from another batch was regrouped into the wrong number of examples
    pst(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"S=2 samples of the last forward pass of 3 inputs, got \(4, 2\)"):
        pst.marginalize(torch.zeros(4, 2))
    assert pst.marginalize(torch.zeros(6, 2)).shape == (3, 2)


def test_one_dimensional_signals_with_affine1d():
    torch.manual_seed(0)
    loc = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32, 8), nn.Tanh())
    pst = stn.ProbabilisticSpatialTransformer(stn.Affine1D(), loc, samples=4)
    x = torch.rand(3, 2, 32)
    out = pst(x)
    assert out.shape == (12, 2, 32) and pst.last_params.shape == (12, 2)
    assert torch.equal(pst.last_scale, pst.last_scale[:1].expand(3, 2)) and float(pst.kl().detach()) > 0
    with torch.no_grad():
        pst.variance_regressor.bias.fill_(-1e4)
        pst.regressor.bias.copy_(torch.tensor([0.8, 0.1]))  # scale and shift the time axis
    torch.testing.assert_close(pst(x), stn.warp(x, torch.tensor([[0.8, 0.1]]).expand(3, 2), "affine1d").repeat(4, 1, 1))


def test_total_kl_sums_every_probabilistic_transformer():
    a, b = _pstn(), _pstn(distribution="gaussian")
    model = nn.ModuleDict({"a": a, "b": b, "plain": stn.SpatialTransformer("affine", _loc(64))})
    # a model without a P-STN: a 0-dim zero of its parameters' dtype (a typed `.item()` works), so
    # adding it to a loss changes neither the loss's value nor its dtype
    mixed = nn.Sequential(nn.Linear(2, 2).double(), nn.Linear(2, 2))  # (the narrowest: a float32 loss stays float32)
    for plain, dtype in ((nn.Linear(2, 2), torch.float32), (nn.Linear(2, 2).double(), torch.float64),
                         (nn.ReLU(), torch.float32), (mixed, torch.float32)):
        zero = total_kl(plain)
        assert isinstance(zero, torch.Tensor) and zero.shape == () and zero.dtype == dtype and zero.item() == 0.0
        loss = (plain[1] if plain is mixed else plain)(torch.ones(1, 2, dtype=dtype)).sum()
        assert (loss + zero).dtype == loss.dtype and (loss + zero).item() == loss.item()
    with pytest.raises(RuntimeError, match="forward"):
        total_kl(model)
    x = torch.rand(2, 1, 8, 8)
    a(x), b(x)
    torch.testing.assert_close(total_kl(model), a.kl() + b.kl())


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples"):
        _pstn(samples=0)
    with pytest.raises(ValueError, match="test_samples"):
        _pstn(test_samples="median")
    with pytest.raises(ValueError, match="distribution"):
        _pstn(distribution="cauchy")
    with pytest.raises(ValueError, match="prior_beta"):
        _pstn(prior_beta=0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        _pstn(kl_weight=-1.0)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [("samples", 0, ValueError), ("samples", 2.5, TypeError), ("test_samples", "median", ValueError),
     ("prior_alpha", 0.0, ValueError), ("prior_beta", -1.0, ValueError), ("prior_sigma", float("nan"), ValueError),
     ("kl_weight", -1.0, ValueError), ("distribution", "gaussian", AttributeError)],
)
def test_attributes_set_after_construction_are_checked_as_the_constructor_checks_them(name, value, error):
    """A value set on a built P-STN took effect unchecked: pst.distribution = "normal" kept the
    Student-t noise while the KL became a Gaussian's. The checks are the constructor's, and
    distribution (on which the spread head's start and the prior depend) is fixed."""
    pst = _pstn()
    before = getattr(pst, name)
    with pytest.raises(error, match=name):
        setattr(pst, name, value)
    assert getattr(pst, name) == before
    pst.samples, pst.test_samples, pst.kl_weight = 3, "mean", 0.0  # valid values are taken
    assert (pst.samples, pst.test_samples, pst.kl_weight) == (3, "mean", 0.0)
    assert copy.deepcopy(pst).samples == 3 and pickle.loads(pickle.dumps(pst)).test_samples == "mean"


def test_kl_warns_where_a_reentrant_checkpoint_left_it_without_a_graph():
    """Inside torch.utils.checkpoint(..., use_reentrant=True) the forward runs without
    gradients: kl() had no graph and its term silently added nothing to the gradients (50%
    off with it in the loss). It warns; use_reentrant=False keeps the graph, without a word."""
    from torch.utils.checkpoint import checkpoint

    pst, x = _pstn(), torch.rand(3, 1, 8, 8).requires_grad_()  # (torch warns of a checkpoint without one)
    with pytest.warns(UserWarning, match=r"kl\(\): the last forward pass ran without gradients"):
        checkpoint(pst, x, use_reentrant=True)
        pst.kl()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint(pst, x, use_reentrant=False)
        kl = pst.kl()
        kl.backward()  # (the graph is there)
        assert pst.variance_regressor.bias.grad is not None
        with torch.no_grad():  # evaluation: nothing to warn about
            pst(x)
            pst.kl()


def test_a_float64_pstn_takes_its_prior_in_float64():
    """pstn-cnn1d-cpab's Gaussian prior was computed in float32: near the condition number it
    accepts (1e6), a float64 model's KL was 0.45% off (1232.18 against 1226.72), before and
    after reset_parameters. The covariance is float64 and a float64 pass uses it unrounded."""
    model = stn.create_model("pstn-cnn1d-cpab", input_size=32, width=0.1, samples=2, distribution="gaussian",
                             prior_length_scale=0.45).double()
    st = model.transformers[0]
    cov = stn.CPAB1D(st.transform.tessellation, st.transform.zero_boundary).prior_covariance(
        0.45, 1.0, dtype=torch.float64)
    with torch.no_grad():
        st.variance_regressor.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        model(torch.randn(3, 1, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    mean, sigma = st.last_mean, st.last_scale
    identity = st.transform.identity(dtype=torch.float64)
    expected = kl_divergence(MultivariateNormal(mean, torch.diag_embed(sigma**2)), MultivariateNormal(identity, cov))
    torch.testing.assert_close(st.last_kl, expected.mean(), rtol=1e-9, atol=0)


def test_a_float64_kl_passes_gradients_to_its_prior_buffers():
    """A float64 pass took the float64 prior kept from construction in place of buffers that
    still held its values, and so cut the buffers out of the KL's graph: their gradients were
    None (float32 passes gave them). Buffers that require grad (a prior learned, or
    differentiated through functional_call) are the prior the pass takes: gradcheck of the KL
    with respect to them, as a function of the buffers."""
    cov = torch.eye(6, dtype=torch.float64) * 0.01 + 0.002
    st = stn.ProbabilisticSpatialTransformer("affine", stn.conv_localization(1, (8, 8)), distribution="gaussian",
                                             prior_covariance=cov, samples=2).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = dict(st.named_parameters())

    def kl(precision: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        functional_call(st, {**params, "prior_precision": precision, "prior_logdet": logdet}, (x,))
        return st.last_kl

    buffers = [st.prior_precision.detach().clone().requires_grad_(), st.prior_logdet.detach().clone().requires_grad_()]
    grads = torch.autograd.grad(kl(*buffers), buffers)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert torch.autograd.gradcheck(kl, buffers)


def test_a_loaded_or_substituted_prior_is_the_one_a_float64_pass_uses():
    """A float64 pass took the float64 prior kept from construction, not the buffers' values: a
    module given another prior by load_state_dict (or by functional_call's buffers) computed the
    KL to its own first prior in float64 (8.16 against 6.09), though in float32 to the loaded one."""
    from torch.func import functional_call

    t = stn.CPAB1D(tessellation=4)
    loc = lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh())  # noqa: E731

    def build(cov: torch.Tensor, seed: int) -> stn.ProbabilisticSpatialTransformer:
        torch.manual_seed(seed)
        return stn.ProbabilisticSpatialTransformer(t, loc(), samples=1, distribution="gaussian", prior_covariance=cov)

    a, b = build(t.prior_covariance(), 0), build(4.0 * torch.eye(t.num_params), 1)
    x = torch.rand(2, 1, 12, dtype=torch.float64)

    def kl(module: nn.Module, *state: dict) -> torch.Tensor:
        torch.manual_seed(0)
        functional_call(module, state, (x,)) if state else module(x)
        return module.last_kl

    a, b = a.double(), b.double()
    expected = kl(a)
    torch.testing.assert_close(kl(b, {**dict(a.named_parameters()), **dict(a.named_buffers())}), expected)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(kl(b), expected)
