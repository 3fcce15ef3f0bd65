"""The probabilistic spatial transformer (P-STN): a distribution over θ, sampled and marginalised."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from torchstn._tracing import autocast_off, device_type_of, eager_tensors, exporting
from torchstn._validation import (
    caller_stacklevel,
    check_choice,
    check_floating,
    check_int,
    check_module,
    check_number,
    check_positive,
    check_tensor,
    sizes_traced,
)
from torchstn.nn._localization import make_regressor
from torchstn.nn._spatial_transformer import SamplerKeywords, SpatialTransformer, Unpack, _Checked
from torchstn.sampling import SamplerOptions
from torchstn.transforms import Transform

__all__ = ["DISTRIBUTIONS", "Distribution", "ProbabilisticSpatialTransformer", "total_kl"]

#: the distribution a P-STN puts on θ (its ``distribution`` argument)
Distribution = Literal["student-t", "gaussian"]
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)


def _gamma_kl(alpha_q: torch.Tensor, beta_q: torch.Tensor, alpha_p: float, beta_p: float) -> torch.Tensor:
    r"""Elementwise ``KL(Gamma(α_q, β_q) || Gamma(α_p, β_p))`` (shape-rate parameterisation).

    .. math::
        (α_q - α_p)\,ψ(α_q) - \ln Γ(α_q) + \ln Γ(α_p)
        + α_p (\ln β_q - \ln β_p) + α_q \frac{β_p - β_q}{β_q}
    """
    beta_q = beta_q.clamp_min(torch.finfo(beta_q.dtype).tiny)  # a rate of exactly 0 has an infinite KL
    return (
        (alpha_q - alpha_p) * torch.special.digamma(alpha_q)
        - torch.lgamma(alpha_q)
        + math.lgamma(alpha_p)
        + alpha_p * (beta_q.log() - math.log(beta_p))
        + alpha_q * (beta_p - beta_q) / beta_q
    )


def _gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: float) -> torch.Tensor:
    r"""Elementwise ``KL(N(μ_q, σ_q²) || N(μ_p, σ_p²))``: :math:`\ln\frac{σ_p}{σ_q} + \frac{σ_q^2 + (μ_q - μ_p)^2}{2σ_p^2} - \frac12`."""
    sigma_q = sigma_q.clamp_min(torch.finfo(sigma_q.dtype).tiny)
    return math.log(sigma_p) - sigma_q.log() + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5


def _gaussian_kl_full(
    mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, precision: torch.Tensor, logdet: torch.Tensor
) -> torch.Tensor:
    r"""Per-row ``KL(N(μ_q, diag σ_q²) || N(μ_p, Σ_p))`` from the prior's precision ``Λ = Σ_p⁻¹`` and ``ln det Σ_p``.

    .. math::
        \frac12 \Big( \sum_i Λ_{ii} σ_i^2 + (μ_q - μ_p)^\top Λ (μ_q - μ_p) - P + \ln\det Σ_p - \sum_i \ln σ_i^2 \Big)
    """
    sigma_q = sigma_q.clamp_min(torch.finfo(sigma_q.dtype).tiny)
    d = mu_q - mu_p
    trace = (sigma_q**2 * torch.diagonal(precision)).sum(1)
    mahalanobis = ((d @ precision) * d).sum(1)
    return 0.5 * (trace + mahalanobis - mu_q.shape[1] + logdet - 2 * sigma_q.log().sum(1))


#: the largest condition number accepted for ``prior_covariance`` (its precision is used in float32)
_MAX_CONDITION = 1e6


def _prior_precision(value: object, num_params: int, distribution: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The precision ``(P, P)`` and ``ln det`` of a ``prior_covariance`` argument (float64), or ``None``."""
    if value is None:
        return None
    if distribution != "gaussian":
        raise ValueError(
            f"prior_covariance needs distribution='gaussian' (a full-covariance Gaussian prior on θ), got "
            f"distribution={distribution!r}, whose prior is on the precisions"
        )
    cov = check_tensor("prior_covariance", value, ndim=2)
    check_floating("prior_covariance", cov)
    if cov.shape != (num_params, num_params):
        raise ValueError(f"prior_covariance must have shape ({num_params}, {num_params}), got {tuple(cov.shape)}")
    if cov.is_meta:
        raise ValueError("prior_covariance is on the meta device, which holds no values: compute it on the CPU "
                         "(CPAB1D.prior_covariance(..., device='cpu'), also under torch.device('meta'))")
    cov = cov.detach().to("cpu", torch.float64)
    if not torch.isfinite(cov).all() or not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-12):
        raise ValueError("prior_covariance must be a finite symmetric matrix")
    eigenvalues = torch.linalg.eigvalsh(cov)
    if not eigenvalues[0] > 0:
        raise ValueError(f"prior_covariance must be positive definite, got a smallest eigenvalue of {float(eigenvalues[0]):.3g}")
    condition = float(eigenvalues[-1] / eigenvalues[0])
    if condition > _MAX_CONDITION:
        raise ValueError(
            f"prior_covariance is too ill-conditioned for a KL term (condition number {condition:.3g} > "
            f"{_MAX_CONDITION:g}: its inverse would be rounding noise in float32); add a small multiple of the "
            "identity to it (+ eps * torch.eye(P)), or use a less correlated prior (e.g. a shorter length scale)"
        )
    chol = torch.linalg.cholesky(cov)
    return torch.cholesky_inverse(chol), 2 * torch.diagonal(chol).log().sum()


def _test_samples(value: object) -> int | Literal["mean"]:
    if isinstance(value, str):
        check_choice("test_samples", value, ("mean",))
        return "mean"
    return check_int("test_samples", value, 1)


class ProbabilisticSpatialTransformer(SpatialTransformer):
    r"""A spatial transformer whose localisation net predicts a distribution over θ (P-STN).

    Schwöbel et al., *Probabilistic Spatial Transformer Networks* (arXiv 2004.03637,
    section 3). The localisation features feed two heads: the mean ``μ(x)`` (the usual
    identity-initialised regressor) and a spread (softplus of a second linear head).

    ``distribution="student-t"`` (the paper's model and its reference code): each
    parameter has a Gaussian with a Gamma-distributed precision ``τ``; marginalising
    ``τ`` gives a Student-t,

    .. math::
        θ \mid τ \sim \mathcal N(μ(x), τ^{-1}), \quad q(τ) = \mathrm{Gamma}(α, β(x))
        \;\Rightarrow\; θ \sim t_{2α}\!\left(μ(x), \sqrt{β(x)/α}\right),

    with the concentration ``α`` fixed to the prior's and the rate ``β(x)`` predicted;
    the regulariser is :math:`\mathrm{KL}(\mathrm{Gamma}(α, β(x)) \,\|\, \mathrm{Gamma}(α, β_p))`
    summed over the ``P`` parameters.

    ``distribution="gaussian"`` (the simpler option): :math:`θ \sim \mathcal N(μ(x), σ(x)^2)`
    with the regulariser :math:`\mathrm{KL}(\mathcal N(μ, σ^2) \,\|\, \mathcal N(θ_{id}, σ_p^2))`
    to a prior centred on the identity; with ``prior_covariance`` the prior is
    :math:`\mathcal N(θ_{id}, Σ_p)` instead (e.g. the smoothness prior
    :meth:`~torchstn.transforms.CPAB1D.prior_covariance` of CPAB warps).

    In training, ``samples`` θ per input are drawn with the reparameterisation trick
    (``θ = μ + scale · ε``, ε standard Student-t or normal, so gradients reach both
    heads); in evaluation ``test_samples`` are drawn, or ``test_samples="mean"`` warps
    once at ``μ``. The output stacks the samples sample-major, ``(S·B, C, ...)`` (row
    ``s·B + b``); :meth:`marginalize` combines a classifier's outputs over them (in training
    the mean of the samples' log-probabilities, whose ``nll_loss`` is the ELBO's data term; in
    evaluation the averaged predictive distribution). :meth:`kl` is the weighted term to add
    to the loss: the negative ELBO, as the authors' code computes it, is
    ``NLL + kl_weight · KL / P`` per example, ``P`` the number of parameters of θ.

    Args:
        transform: a :class:`~torchstn.transforms.Transform` or its name.
        localization: any module mapping the input to features.
        output_size: spatial size of the output; ``None`` keeps the input's.
        samples: ``S`` in training.
        test_samples: ``S`` in evaluation (default ``samples``), or ``"mean"``.
        distribution: ``"student-t"`` or ``"gaussian"``.
        prior_alpha, prior_beta: the Gamma prior on the precision (student-t); the
            reference code's defaults are 1 and 1.
        prior_sigma: standard deviation of the Gaussian prior around the identity.
        prior_covariance: a full ``(P, P)`` covariance (symmetric positive definite) of
            the Gaussian prior around the identity, in place of ``prior_sigma``; only with
            ``distribution="gaussian"``. Kept as the buffers ``prior_precision`` and
            ``prior_logdet`` (``None`` without it).
        init_scale: the initial spread of θ (student-t scale ``sqrt(β/α)`` or σ),
            the same for every input (the spread head starts with zero weights); 0.08 is
            about the reference code's ``var_init=-5``.
        kl_weight: weight of the KL per parameter of θ in :meth:`kl` (the authors' code
            averages the KL over θ's parameters as well as over the batch, so their weights
            carry over); the paper tunes it per training set size (1e-5 to 1e-3 on MNIST
            subsets).
        in_features, sampler, **sampler_keywords: as in
            :class:`~torchstn.nn.SpatialTransformer`.

    Attributes:
        last_params: the sampled θ ``(S·B, P)`` of the last forward pass.
        last_mean, last_scale: ``μ`` and the scale of θ ``(B, P)`` of the last pass.
        last_kl: the KL of the last pass, summed over parameters and averaged over the
            batch (unweighted), with its graph: :meth:`kl` is a term of the loss. Under
            ``torch.utils.checkpoint(..., use_reentrant=True)`` the pass runs without
            gradients and the KL has no graph (:meth:`kl` warns in training): use
            ``use_reentrant=False``.
        last_samples: ``S`` of the last pass.

    Example:
        >>> loc = stn.conv_localization(1, (28, 28))
        >>> pst = stn.ProbabilisticSpatialTransformer(stn.Similarity(), loc, samples=4)
        >>> y = pst(torch.rand(3, 1, 28, 28))
        >>> y.shape, pst.last_params.shape  # 4 warps of each of the 3 inputs
        (torch.Size([12, 1, 28, 28]), torch.Size([12, 4]))
        >>> pst.marginalize(torch.randn(12, 10)).shape  # average over the samples
        torch.Size([3, 10])
        >>> bool(pst.kl() >= 0)
        True
    """

    last_mean: torch.Tensor | None
    last_scale: torch.Tensor | None
    last_kl: torch.Tensor | None
    prior_precision: torch.Tensor | None
    prior_logdet: torch.Tensor | None

    samples = _Checked(lambda name, value: check_int(name, value, 1))
    test_samples = _Checked(lambda name, value: _test_samples(value))
    # (the spread head's prediction, the noise, the KL and the prior all follow the distribution: set
    # later, the noise stayed Student-t while the KL became a Gaussian's)
    distribution = _Checked(lambda name, value: check_choice(name, value, DISTRIBUTIONS),
                            fixed="its spread head's start and its prior depend on it")
    prior_alpha = _Checked(check_positive)
    prior_beta = _Checked(check_positive)
    prior_sigma = _Checked(check_positive)
    kl_weight = _Checked(lambda name, value: check_number(name, value, low=0.0))

    def __init__(
        self,
        transform: Transform | str,
        localization: nn.Module,
        output_size: Sequence[int] | None = None,
        *,
        samples: int = 8,
        test_samples: int | Literal["mean"] | None = None,
        distribution: Distribution = "student-t",
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        prior_sigma: float = 0.1,
        prior_covariance: torch.Tensor | None = None,
        init_scale: float = 0.08,
        kl_weight: float = 1e-4,
        in_features: int | None = None,
        sampler: SamplerOptions | None = None,
        **sampler_keywords: Unpack[SamplerKeywords],
    ) -> None:
        super().__init__(transform, localization, output_size, in_features=in_features, sampler=sampler, **sampler_keywords)
        self.samples = samples  # (each checked where it is set: _Checked)
        self.test_samples = samples if test_samples is None else test_samples
        self.distribution = distribution
        self.prior_alpha, self.prior_beta, self.prior_sigma = prior_alpha, prior_beta, prior_sigma
        self.kl_weight = kl_weight
        # (kept in float64 on the CPU, beside the buffers, so that reset_parameters restores them)
        self._prior = _prior_precision(prior_covariance, self.transform.num_params, self.distribution)
        # the buffers on torch's default device, as a torch module's (under torch.device("cuda") they stayed
        # on the CPU, and the KL copied them to the device in every forward pass)
        dtype, device = torch.get_default_dtype(), torch.get_default_device()
        for name, value in zip(("prior_precision", "prior_logdet"), self._prior or (None, None)):
            self.register_buffer(name, None if value is None else value.to(device=device, dtype=dtype))
        init_scale = check_positive("init_scale", init_scale)
        # the spread head predicts softplus^{-1} of β (student-t) or σ (gaussian), the same for every input at first
        spread0 = self.prior_alpha * init_scale**2 if self.distribution == "student-t" else init_scale
        start = [math.log(math.expm1(spread0))] * self.transform.num_params
        self.variance_regressor = make_regressor(localization, start, in_features)
        self.last_mean = self.last_scale = self.last_kl = None
        self.last_samples = 0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The prior's buffers from the ``prior_covariance`` given (after ``to_empty``, as a
        ``BatchNorm`` resets its statistics); the regressors reset themselves."""
        if self._prior is not None:
            self.prior_precision.copy_(self._prior[0])
            self.prior_logdet.copy_(self._prior[1])

    def predict_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, spread)``, each ``(B, P)``: the spread is ``β`` (student-t) or ``σ`` (gaussian)."""
        features = self.features(x)
        return self.regressor(features), F.softplus(self.variance_regressor(features))

    def _scale(self, spread: torch.Tensor) -> torch.Tensor:
        return (spread / self.prior_alpha).sqrt() if self.distribution == "student-t" else spread

    def _noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Standard noise of the distribution, in the dtype of ``like``: drawn in float32 for a
        float16/bfloat16 ``like`` (autocast, ``.bfloat16()``: torch has no CPU gamma sampler in
        those), and out of place (``vmap(..., randomness="different")`` refuses the in-place
        draw of ``StudentT.sample``), as StudentT draws it: a normal, then a chi-square."""
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        normal = torch.randn(shape, dtype=dtype, device=like.device)
        if self.distribution == "gaussian":
            return normal.to(like.dtype)
        value = 2 * self.prior_alpha
        tracing = torch.jit.is_tracing()
        if tracing or not like.is_cpu:
            # the tracer warns about a literal tensor, it records this op instead; and a literal off the
            # CPU is a copy from the host, which waits for the device in every forward pass
            df, rate = (torch.full((), v, dtype=dtype, device=like.device) for v in (value, 0.5))
        else:  # a literal, which torch.export folds into a constant (Chi2 checks it then)
            df, rate = (torch.tensor(v, dtype=dtype, device=like.device) for v in (value, 0.5))
        # Chi2(df) as the Gamma(df / 2, 1/2) it is, its rate a tensor (Chi2 makes a literal of it, which
        # the tracer warns about); its values checked on the CPU only (the constructor checked
        # prior_alpha; off it each check is a wait for the device, and meta and the tracer have no values)
        chi2 = torch.distributions.Gamma(df / 2, rate, validate_args=None if like.is_cpu and not tracing else False)
        return (normal * torch.rsqrt(chi2.sample(shape) / df)).to(like.dtype)

    def _kl(self, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        if self.distribution == "student-t":
            alpha = torch.full_like(spread, self.prior_alpha)
            per_param = _gamma_kl(alpha, spread, self.prior_alpha, self.prior_beta)
        else:
            identity = self.transform.identity(device=mean.device, dtype=mean.dtype)
            if self.prior_precision is not None:
                precision, logdet = self._exact_prior(mean) or (self.prior_precision, self.prior_logdet)
                precision, logdet = precision.to(mean.device, mean.dtype), logdet.to(mean.device, mean.dtype)
                return _gaussian_kl_full(mean, spread, identity, precision, logdet).mean()
            per_param = _gaussian_kl(mean, spread, identity, self.prior_sigma)
        return per_param.sum(1).mean()

    def _exact_prior(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a float64 pass, the float64 prior kept beside the buffers (not their rounding),
        where the buffers still hold its values; ``None`` where they hold another prior (loaded
        with ``load_state_dict``, or given to ``torch.func.functional_call``: a float64 pass
        computed the KL to the prior the module was built with), and where anything records or
        transforms the pass (a tracer, a compiler, an exporter's fake tensors: a data-dependent
        test), and where a buffer requires grad (a prior learned or differentiated: the KL is a
        function of the buffers, which the kept copy would cut out of its graph), which take the buffers."""
        held = self.prior_precision
        if (self._prior is None or like.dtype != torch.float64 or held.is_meta or not eager_tensors(held)
                or held.requires_grad or self.prior_logdet.requires_grad):
            return None
        precision, logdet = self._prior
        same = held.shape == precision.shape and torch.allclose(held.detach().to("cpu", torch.float64), precision,
                                                                 rtol=1e-6, atol=0.0)
        return (precision, logdet) if same else None

    def kl(self) -> torch.Tensor:
        """``kl_weight · KL / P`` of the last forward pass (``P`` the number of parameters of θ):
        the term to add to the loss. Per parameter, as the authors' code weighs it (the mean of
        the per-parameter KL over θ's parameters and the batch): their ``kl_weight`` regularises
        as much here (the KL summed over the parameters, ``last_kl``, weighted by it was ``P``
        times theirs until 2026-12-04)."""
        if self.last_kl is None:
            raise RuntimeError("kl() needs a forward pass first")
        kl = self.last_kl
        if (self.training and torch.is_grad_enabled() and not kl.requires_grad and eager_tensors(kl)
                and any(p.requires_grad for p in self.variance_regressor.parameters())):
            warnings.warn("kl(): the last forward pass ran without gradients (under torch.no_grad(), or inside "
                          "torch.utils.checkpoint(..., use_reentrant=True)), so this term of the loss adds nothing to "
                          "them: checkpoint with use_reentrant=False, which keeps its graph", UserWarning,
                          stacklevel=caller_stacklevel())
        return self.kl_weight * kl / self.transform.num_params

    def marginalize(self, logits: torch.Tensor) -> torch.Tensor:
        r"""Combine a classifier's outputs over the samples of the last pass, as the paper and
        the authors' code do: in training the Monte Carlo estimate of the ELBO's data term, in
        evaluation the predictive distribution.

        Args:
            logits: ``(S·B, K)`` logits (or log-probabilities) of the warped samples, in
                the order of the output.

        Returns:
            ``(B, K)``: in training mode the mean of the samples' log-probabilities,
            :math:`\frac1S \sum_s \log p(y \mid x, θ_s)`, whose ``nll_loss`` is the mean of
            the samples' negative log-likelihoods (the ELBO's term; not normalised over ``K``
            for ``S > 1``: take ``nll_loss``, not ``cross_entropy``, which would add the log of
            its normaliser); in evaluation the log-probabilities of the averaged prediction,
            :math:`\log \frac1S \sum_s p(y \mid x, θ_s)`. With one sample both are its
            log-probabilities. Until 2026-12-04 training took the second too: the log of a mean
            of probabilities, another objective than the ELBO's for ``S > 1``.
        """
        s = self.last_samples
        # S times the last pass's batch, checked eagerly (an exported pass keeps no record of its
        # batch and a traced one's is symbolic: a multiple of S then)
        batch = self.last_mean.shape[0] if self.last_mean is not None and eager_tensors(logits) else None
        wrong = s == 0 or logits.dim() != 2
        if not wrong and not sizes_traced():
            rows = logits.shape[0]
            wrong = bool(rows % s) if batch is None else rows != s * batch
        if wrong:
            inputs = "" if batch is None else f" of {batch} inputs"
            raise ValueError(
                f"logits must have shape (S*B, K) with S={s} samples of the last forward pass{inputs}, "
                f"got {tuple(logits.shape)}"
            )
        log_probs = F.log_softmax(logits, dim=-1).reshape(s, -1, logits.shape[-1])
        if self.training:
            return log_probs.mean(0)
        return torch.logsumexp(log_probs, dim=0) - math.log(s)

    def forward(self, x: torch.Tensor, return_params: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Warp ``x`` by ``S`` sampled θ.

        Returns:
            ``(S·B, C, *output_size)`` (sample-major), or ``(warped, θ)`` with θ ``(S·B, P)``.
        """
        mean, spread = self.predict_distribution(x)
        scale = self._scale(spread)
        s = self.samples if self.training else self.test_samples
        if s == "mean":
            s, params = 1, mean
        else:
            noise = self._noise((s, *mean.shape), mean)
            params = (mean + scale * noise).flatten(0, 1)
            x = x.repeat(s, *([1] * (x.dim() - 1)))
        self.last_samples = s  # marginalize() reads it, also in an exported pass
        if not exporting():  # an exported program keeps no record of its tensors
            self.last_params, self.last_mean, self.last_scale = params, mean, scale
            wide = torch.promote_types(mean.dtype, torch.float32)  # (a sum over P: in bfloat16 1.2% off)
            with autocast_off(device_type_of(mean)):
                self.last_kl = self._kl(mean.to(wide), spread.to(wide))
        out = self.transform_input(x, params)
        return (out, params) if return_params else out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, distribution={self.distribution!r}, samples={self.samples}, "
            f"test_samples={self.test_samples!r}, kl_weight={self.kl_weight:g}"
            + (", prior_covariance=full" if self.prior_precision is not None else "")
        )


def total_kl(model: nn.Module) -> torch.Tensor:
    """The sum of :meth:`ProbabilisticSpatialTransformer.kl` over a model's P-STN modules.

    What a training loop adds to the data loss: ``loss = F.nll_loss(log_probs, y) +
    total_kl(model)`` for a model that returns the log-probabilities of
    :meth:`~ProbabilisticSpatialTransformer.marginalize` (the negative ELBO),
    ``torchstn.engine.data_loss(model, model(x), y) + total_kl(model)`` for any model, as the
    engine's loop. Always a 0-dim tensor (``.item()`` works): for a model without a P-STN a
    zero of the narrowest floating dtype among its parameters, on that parameter's device
    (torch's default dtype on the CPU if it has none), which a loss of that dtype or a wider
    one keeps (a 0-dim CPU tensor combines with tensors on any device).
    """
    terms = [m.kl() for m in check_module("model", model).modules() if isinstance(m, ProbabilisticSpatialTransformer)]
    if terms:
        return sum(terms[1:], terms[0])
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if not floating:
        return torch.zeros((), device="cpu")
    narrowest = min(floating, key=lambda p: p.element_size())
    return torch.zeros((), dtype=narrowest.dtype, device=narrowest.device)
