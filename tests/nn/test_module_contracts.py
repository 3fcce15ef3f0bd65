"""Spatial transformers behave like any ``nn.Module``: copies, EMA/SWA, pickle, state_dict,
and input checks that name what the localisation net was built for."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import torchstn as stn
from tests._helpers import perturb
from torchstn.models import create_model


def _modules() -> dict[str, nn.Module]:
    loc = lambda: stn.conv_localization(1, (16, 16))  # noqa: E731
    return {
        "st": stn.SpatialTransformer("affine", loc()),
        "cascade": stn.CascadedSpatialTransformer("affine", loc(), steps=2),
        "pstn": stn.ProbabilisticSpatialTransformer("affine", loc(), samples=2),
        "parallel": stn.ParallelSpatialTransformers([stn.SpatialTransformer("affine", loc()) for _ in range(2)]),
    }


@pytest.mark.parametrize("name", ["st", "cascade", "pstn", "parallel"])
def test_deepcopy_pickle_and_state_dict_after_a_training_forward(name):
    module = perturb(_modules()[name]).train()
    x = torch.rand(3, 1, 16, 16)
    loss = module(x).square().mean() + stn.nn.total_kl(module)  # graph still alive
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), copied.state_dict().values()))
        copied.eval()
        module.eval()
        torch.manual_seed(1)
        expected = module(x)
        torch.manual_seed(1)
        torch.testing.assert_close(copied(x), expected)
        module.train()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    fresh = _modules()[name]
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    loss.backward()  # copying did not break the original's graph


@pytest.mark.parametrize("name", ["st-cnn-aff", "st-cnn-tps", "ic-stn-2", "p-stn", "st-cnn-3d-aff", "st-cnn1d-cpab"])
def test_models_build_and_run_on_the_meta_device_and_materialise_as_the_identity(name):
    """Deferred initialisation: built under ``torch.device("meta")`` (a regressor's start was
    copied out of a meta tensor, a TPS solved its system there), run on meta tensors (FLOP
    counting; autocast's query raised for "meta", a P-STN's chi-square checked its values),
    then ``to_empty`` and each module's ``reset_parameters``: the transformers start as the
    identity again, and ``load_state_dict(assign=True)`` gives the CPU-built model's outputs
    (a CPAB1D built there kept its basis on meta, and no materialised model could run)."""
    args = {"input_size": 24} if "3d" in name else {"input_size": 64, "width": 0.05} if "1d" in name else {}
    torch.manual_seed(0)
    reference = create_model(name, **args).eval()
    with torch.device("meta"):
        model = create_model(name, **args)
    assert all(p.is_meta for p in model.parameters())
    shape = (2, 1, 24, 24, 24) if "3d" in name else (2, 1, 64) if "1d" in name else (2, 1, 28, 28)
    assert model.eval()(torch.empty(shape, device="meta")).shape == reference(torch.rand(shape)).shape
    model = model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    stn.clear_caches()  # (what the reference built on the CPU, e.g. a CPAB basis, is not lent to the others)
    torch.manual_seed(1)
    model.eval()(torch.rand(shape))
    regressors = [m for m in model.modules() if isinstance(m, stn.nn.IdentityRegressor)]
    assert regressors and all(not m.weight.any() for m in regressors)
    for regressor, same in zip(regressors, [m for m in reference.modules() if isinstance(m, stn.nn.IdentityRegressor)]):
        torch.testing.assert_close(regressor.bias, same.bias)  # the start: the identity (or the model's own)
    with torch.device("meta"):
        loaded = create_model(name, **args)
    loaded.load_state_dict(reference.state_dict(), assign=True)
    x = torch.rand(shape)
    torch.manual_seed(1)
    expected = reference(x)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.eval()(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["st", "cascade", "pstn", "parallel"])
def test_torch_func_over_a_module_and_copies_after_it(name):
    """vmap and per-sample gradients run the modules, and a copy taken afterwards (an EMA
    step) works: the records made inside the transform are not carried into it."""
    module = perturb(_modules()[name]).eval()
    if name == "pstn":
        module.test_samples = "mean"  # one output per input, so that per-sample outputs compare
    x = torch.rand(3, 1, 16, 16)
    per_sample = torch.func.vmap(lambda xi: module(xi[None])[0], randomness="same")(x)
    torch.testing.assert_close(per_sample, module(x), atol=1e-5, rtol=1e-5)
    torch.func.vmap(lambda xi: module(xi[None])[0], randomness="same")(x)  # the record now comes from a vmap
    params = {k: v.detach() for k, v in module.named_parameters()}
    loss = lambda p, xi: torch.func.functional_call(module, p, (xi[None],)).square().mean()  # noqa: E731
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")(params, x)
    assert all(g.shape[0] == 3 for g in grads.values())
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module)), AveragedModel(module).module):
        torch.testing.assert_close(copied(x), module(x))


def test_a_compositional_projective_cascade_under_vmap():
    """Its identity start is a plain tensor inside the transform (once an autograd.Function without setup_context)."""
    ic = perturb(stn.CascadedSpatialTransformer(stn.Projective(), stn.conv_localization(1, (16, 16)), steps=2,
                                                compositional=True, share=True))
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(torch.func.vmap(lambda xi: ic(xi[None])[0])(x), ic(x), atol=1e-5, rtol=1e-5)


def test_last_params_keep_the_graph_for_regularisers():
    st = perturb(stn.SpatialTransformer("affine", stn.conv_localization(1, (16, 16))))
    out, theta = st(torch.rand(2, 1, 16, 16), return_params=True)
    assert theta.requires_grad and theta.grad_fn is not None
    assert st.last_params is theta


def test_averaged_model_and_ema_of_an_st_cnn_during_training():
    torch.manual_seed(0)
    model = create_model("st-cnn-aff")
    swa, ema = AveragedModel(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        copy.deepcopy(model)  # what many EMA helpers do every step, mid-graph
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        swa.update_parameters(model)
        ema.update_parameters(model)
    for averaged in (swa, ema):
        diffs = [(a - b).abs().max() for a, b in zip(averaged.module.parameters(), model.parameters())]
        assert max(diffs) > 0  # an average, not a copy
        assert averaged(x).shape == (8, 10)


def test_wrong_input_names_what_the_localisation_net_was_built_for():
    st = stn.SpatialTransformer("affine", stn.conv_localization(1, (28, 28)))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(28, 28\)"):
        st(torch.rand(28, 28))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\), got \(10, 3, 28, 28\).*in_channels=1"):
        st(torch.rand(10, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(10, 1, 20, 20\).*input_size=\(28, 28\)"):
        st(torch.rand(10, 1, 20, 20))
    model = create_model("st-cnn-aff")  # the paper models' localisation nets declare their input too
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
        model(torch.rand(2, 1, 42, 42))


class _FlattenFor28(nn.Flatten):
    """A localisation net whose class declares its input, as a property."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 28, 28)


def test_an_input_declared_by_the_class_is_checked_as_one_declared_on_the_instance():
    st = stn.SpatialTransformer("affine", _FlattenFor28(), in_features=28 * 28)
    assert st(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\), got \(2, 1, 20, 20\)"):
        st(torch.rand(2, 1, 20, 20))


def test_a_localisation_net_without_a_declared_input_is_checked_by_its_feature_width():
    st = stn.SpatialTransformer("affine", nn.Flatten(), in_features=28 * 28)
    with pytest.raises(ValueError, match=r"gives 400 features .* regressor expects in_features=784"):
        st(torch.rand(2, 1, 20, 20))


def test_a_gaussian_pstn_prior_builds_on_meta_and_materialises_with_its_values():
    """pstn-cnn1d-cpab's Gaussian prior was computed on the meta device under
    ``torch.device("meta")`` and then read (no data: the model could not be built), and a
    P-STN's prior buffers held uninitialised memory after ``to_empty`` (a KL with a log
    determinant of -5e11): ``reset_parameters`` restores them, a meta covariance is named."""
    args = {"input_size": 64, "width": 0.05, "samples": 2, "distribution": "gaussian"}
    reference = create_model("pstn-cnn1d-cpab", **args)
    with torch.device("meta"):
        model = create_model("pstn-cnn1d-cpab", **args)
    model = model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for name in ("prior_precision", "prior_logdet"):
        torch.testing.assert_close(getattr(model.transformers[0], name), getattr(reference.transformers[0], name))
    with pytest.raises(ValueError, match="prior_covariance is on the meta device"):
        stn.ProbabilisticSpatialTransformer(stn.CPAB1D(4), nn.Sequential(nn.Flatten(), nn.Linear(16, 8)),
                                            distribution="gaussian", prior_covariance=torch.empty(3, 3, device="meta"))


class _HostCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts copies from a CPU tensor to another device (each waits for a CUDA device)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            target = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device
            if isinstance(source, torch.Tensor) and source.is_cpu and target is not None and \
                    torch.device(target).type != "cpu":
                self.copies.append(tuple(source.shape))
        return func(*args, **kwargs)


def test_forward_passes_off_the_cpu_copy_nothing_from_the_host():
    """On another device (meta here, standing for CUDA) a cascade's and a P-STN's forward passes
    copied constants from the host in every call (the identity, the Student-t noise's constants),
    each copy a wait for a CUDA device; a P-STN built under torch.device(...) kept its prior on
    the CPU, and the KL copied it over in every pass."""
    loc = stn.conv_localization(1, (8, 8))
    x = torch.empty(2, 1, 8, 8, device="meta")
    cascade = stn.CascadedSpatialTransformer("affine", loc, steps=2).to("meta")
    student = stn.ProbabilisticSpatialTransformer("affine", loc, samples=2).to("meta")
    prior = 0.1 * torch.eye(6)
    with torch.device("meta"):
        gaussian = stn.ProbabilisticSpatialTransformer("affine", stn.conv_localization(1, (8, 8)),
                                                       distribution="gaussian", prior_covariance=prior)
    assert {b.device.type for b in gaussian.buffers()} == {"meta"}
    for module in (cascade, student, gaussian):
        module(x)  # (fills the caches: one copy each, once)
        with _HostCopies() as mode:
            module(x)
            if hasattr(module, "kl"):
                module.kl()
        assert mode.copies == [], type(module).__name__
