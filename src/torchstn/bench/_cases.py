"""The benchmark cases and, for each, the contenders doing the same work.

A warp case times ``torchstn.warp`` against the plain-PyTorch warp
(``F.affine_grid + F.grid_sample``, where the family is affine-representable),
kornia's warp for the family (where kornia has one), OpenCV's ``warpAffine`` /
``warpPerspective`` (2-D matrix families, forward only) and a ``jax.jit`` warp (matrix
families in 2-D and 3-D, forward and forward+backward). OpenCV and JAX are peers outside
torch (:class:`ForeignContender`): each is checked against torch's warp before it is
timed and left out, with a note, when it differs. The training case times one optimiser
step of the ST-CNN against the same CNN without the transformer.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torch.nn.functional as F

from torchstn._validation import check_names, first_line
from torchstn.bench import _jax, _opencv, _peers
from torchstn.sampling import BACKENDS, fused_applies, fused_status, sample, warp
from torchstn.transforms import MatrixTransform, ThinPlateSpline, Transform, get_transform

__all__ = [
    "AFFINE_FAMILIES",
    "CASES",
    "PEERS",
    "PEER_FLAGS",
    "PEER_TOLERANCE",
    "Case",
    "Contender",
    "ForeignContender",
    "Workload",
    "build_training_step",
    "build_workload",
    "select_cases",
]

#: families whose grid ``F.affine_grid`` can make (the plain-PyTorch peer exists)
AFFINE_FAMILIES: tuple[str, ...] = ("translation", "attention", "similarity", "affine", "affine3d")

#: every peer torchstn is timed against, in report order (each skipped with a note where it cannot run)
PEERS: tuple[str, ...] = ("torch", "kornia", "opencv", "jax")

#: how far a peer outside torch may be from torch's warp before it is timed, as
#: ``max |peer - torch| / max(1, max |torch|)``: output and gradient wrt the image (images in
#: [0, 1]: an absolute 1e-4), then the gradient wrt the matrix, which is looser because
#: bilinear sampling's derivative jumps at pixel edges and float32 rounding moves a few of
#: 10^5 points across one: torch's own float32 θ-gradient is 3e-3 from its float64 one at
#: 1x3x224x224
PEER_TOLERANCE: dict[str, float] = {"output": 1e-4, "d/dx": 1e-4, "d/dmatrix": 1e-2}

#: the ``torchstn bench`` flag that leaves a peer out, for the peers that have one (the others are left out
#: only by the ``peers`` argument of :func:`~torchstn.bench.run_benchmark`); the command makes its flags from it
PEER_FLAGS: dict[str, str] = {"kornia": "--no-kornia"}

#: how far the random parameters stray from the identity, per family
_PARAM_NOISE: dict[str, float] = {"projective": 0.05, "tps": 0.05}


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        name: short identifier used by ``--cases`` (``"affine-28"``).
        family: transform name (``"affine"``, ``"tps"``, ...) or ``"train"`` for the
            ST-CNN training step.
        shape: input shape ``(B, C, *spatial)``.
        size: output spatial size; ``None`` keeps the input's.
        channels_last: the input in channels_last memory format (a pixel's channels side
            by side, the layout of OpenCV's and NumPy's ``(H, W, C)`` images).
        quick_of: set by :meth:`quick`: the shape of the case it shrinks, which the label
            names (two cases can shrink to one shape: affine-28 and affine-b4-8 to 4x1x8x8).
    """

    name: str
    family: str
    shape: tuple[int, ...]
    size: tuple[int, ...] | None = None
    channels_last: bool = False
    quick_of: str | None = None

    @property
    def out_size(self) -> tuple[int, ...]:
        """The output spatial size."""
        return self.size if self.size is not None else self.shape[2:]

    @property
    def label(self) -> str:
        """Human-readable description: family, input shape, and the output size when it differs."""
        dims = "x".join(str(s) for s in self.shape)
        if self.family == "train":
            return f"ST-CNN step {dims}"
        text = f"{self.family} {dims}"
        if self.size is not None:
            text += "->" + "x".join(str(s) for s in self.size)
        text += " CL" if self.channels_last else ""
        return text + (f" (quick stand-in for {self.quick_of})" if self.quick_of else "")

    def quick(self) -> Case:
        """A tiny version of the case (batch <= 4, sides / 4, at least 8) for smoke tests."""
        def shrink(sides: Sequence[int]) -> tuple[int, ...]:
            return tuple(max(8, s // 4) for s in sides)

        of = "x".join(str(s) for s in self.shape)
        if self.family == "train":  # the paper networks need 28x28 inputs
            return replace(self, shape=(min(self.shape[0], 4), *self.shape[1:]), quick_of=of)
        shape = (min(self.shape[0], 4), self.shape[1], *shrink(self.shape[2:]))
        return replace(self, shape=shape, size=None if self.size is None else shrink(self.size), quick_of=of)


#: the cases timed by default, in report order: the affine family from MNIST (28 px) to ImageNet
#: (224 px) sizes, batch-1 calls (latency; one of them on a channels_last image, OpenCV's
#: layout, one on a single channel), batch-4 calls of small images (where per-call work
#: dominates), every other family, two volumes and one ST-CNN training step
CASES: tuple[Case, ...] = (
    Case("affine-28", "affine", (256, 1, 28, 28)),
    Case("affine-60to30", "affine", (256, 1, 60, 60), (30, 30)),
    Case("affine-64", "affine", (64, 3, 64, 64)),
    Case("affine-224", "affine", (32, 3, 224, 224)),
    Case("affine-b1-28", "affine", (1, 1, 28, 28)),
    Case("affine-b1-224", "affine", (1, 3, 224, 224)),
    Case("affine-b1-224-cl", "affine", (1, 3, 224, 224), channels_last=True),
    Case("affine-b1-224-gray", "affine", (1, 1, 224, 224)),
    Case("affine-b4-8", "affine", (4, 1, 8, 8)),
    Case("affine-b4-16", "affine", (4, 3, 16, 16)),
    Case("translation-28", "translation", (256, 1, 28, 28)),
    Case("attention-28", "attention", (256, 1, 28, 28)),
    Case("similarity-28", "similarity", (256, 1, 28, 28)),
    Case("projective-64", "projective", (64, 3, 64, 64)),
    Case("tps-28", "tps", (256, 1, 28, 28)),
    Case("tps-224", "tps", (32, 3, 224, 224)),
    Case("affine3d-32", "affine3d", (8, 1, 32, 32, 32)),
    Case("affine3d-64", "affine3d", (2, 1, 64, 64, 64)),
    Case("st-cnn", "train", (256, 1, 28, 28)),
)


def select_cases(patterns: str | Sequence[str] | None = None, cases: Sequence[Case] = CASES) -> list[Case]:
    """The cases whose name matches any of ``patterns`` (shell-style, ``"affine-*"``; one string is one
    pattern); all for ``None``.

    Raises:
        TypeError: ``patterns`` is not a string or a sequence of strings.
        ValueError: a pattern matches no case (the message lists the names).
    """
    if not patterns:
        return list(cases)
    chosen: list[Case] = []
    for pattern in check_names("cases", patterns):
        matched = [c for c in cases if fnmatch.fnmatchcase(c.name, pattern)]
        if not matched:
            raise ValueError(f"no benchmark case matches {pattern!r}; the cases are: {', '.join(c.name for c in cases)}")
        chosen += [c for c in matched if c not in chosen]
    return [c for c in cases if c in chosen]


@dataclass
class Contender:
    """One implementation of a case: ``run(*leaves)`` returns the warped tensor.

    ``leaves`` are the tensors the backward pass differentiates with respect to (the
    input image and this contender's own parameterisation of the transform).
    """

    run: Callable[..., torch.Tensor]
    leaves: tuple[torch.Tensor, ...]

    def forward(self) -> torch.Tensor:
        """The forward pass (autograd off: inference)."""
        with torch.no_grad():
            return self.run(*self.leaves)

    def forward_backward(self, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Forward, then the gradients with respect to every leaf for the output gradient ``grad_out``."""
        return torch.autograd.grad(self.run(*self.leaves), self.leaves, grad_out)


@dataclass
class ForeignContender:
    """A peer outside torch (OpenCV, JAX) on its own copies of the inputs, converted once, untimed.

    Attributes:
        forward: the timed forward pass; returns the peer's own output, fully computed.
        output: the forward pass's result as a torch tensor (what the check compares).
        backward: the timed forward+backward for the workload's output gradient, or
            ``None`` where the peer has no gradient (OpenCV): it then sits out that pass.
        gradients: the gradients with respect to the image and the matrix as torch
            tensors (for the check), or ``None`` with ``backward``.

    Example:
        >>> work = build_workload(Case("t", "affine", (1, 1, 8, 8)), peers=())
        >>> work.contenders["numpy"] = ForeignContender(lambda: None, lambda: torch.zeros(1, 1, 8, 8))
        >>> sorted(work.timed("forward")), sorted(work.timed("forward+backward"))  # no gradient: forward only
        (['numpy', 'torchstn'], ['torchstn'])
    """

    forward: Callable[[], object]
    output: Callable[[], torch.Tensor]
    backward: Callable[[], object] | None = None
    gradients: Callable[[], tuple[torch.Tensor, ...]] | None = None


@dataclass
class Workload:
    """Everything one warp case times, built once per run."""

    case: Case
    transform: Transform
    x: torch.Tensor
    params: torch.Tensor
    grad_out: torch.Tensor
    contenders: dict[str, Contender | ForeignContender]
    #: grid generation alone, per contender that has a separate grid step
    grid_fns: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: ``warp`` with each backend that warps the case its own way (``"warp:fused"``,
    #: ``"warp:torch"`` = grid + ``F.grid_sample``), where the fused kernel applies
    warp_backends: dict[str, Contender] = field(default_factory=dict)
    #: how far each peer outside torch is from torch's warp, per part checked (see :data:`PEER_TOLERANCE`)
    peer_errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def timed(
        self, pass_name: str, contenders: Mapping[str, Contender | ForeignContender] | None = None
    ) -> dict[str, Callable[[], object]]:
        """What is timed of each contender (default: :attr:`contenders`) in ``pass_name``.

        ``"forward"`` or ``"forward+backward"`` (with :attr:`grad_out`); a contender
        without a gradient sits out the second. The forward calls are to be timed under
        ``torch.no_grad()`` (:func:`~torchstn.bench.run_case` enters it): once around the timed loop, as an
        inference loop holds it, instead of once per call (entering and leaving it costs
        about 2 µs, a fifth of a batch-1 warp of 28x28).

        Example:
            >>> work = build_workload(Case("t", "affine", (1, 1, 8, 8)), peers=("torch",))
            >>> sorted(work.timed("forward+backward"))
            ['torch', 'torchstn']
        """
        contenders = self.contenders if contenders is None else contenders
        if pass_name == "forward":  # (timed under one torch.no_grad(): the docstring)
            return {name: partial(c.run, *c.leaves) if isinstance(c, Contender) else c.forward
                    for name, c in contenders.items()}
        if pass_name != "forward+backward":
            raise ValueError(f"pass_name must be 'forward' or 'forward+backward', got {pass_name!r}")
        out: dict[str, Callable[[], object]] = {}
        for name, c in contenders.items():
            if isinstance(c, Contender):
                out[name] = partial(c.forward_backward, self.grad_out)
            elif c.backward is not None:
                out[name] = c.backward
        return out

    def sampler_fns(self, backends: Sequence[str] | None = None) -> dict[str, Callable[[], torch.Tensor]]:
        """``sample(x, grid, backend=name)`` for each of ``backends`` (default: every registered one), on torchstn's grid."""
        grid = self.transform.grid(self.params, self.case.out_size).detach()
        x = self.x.detach()

        def make(name: str) -> Callable[[], torch.Tensor]:
            def fn() -> torch.Tensor:  # (timed under one torch.no_grad(), entered around the loop)
                return sample(x, grid, backend=name)

            return fn

        return {name: make(name) for name in (BACKENDS if backends is None else backends)}

    def traffic_bytes(self) -> int:
        """Bytes a sampler must move at least: read the input and the grid, write the output."""
        b, c = self.x.shape[:2]
        n_out = math.prod(self.case.out_size)
        item = self.x.element_size()
        return self.x.numel() * item + b * n_out * len(self.case.out_size) * item + b * c * n_out * item


def _random_params(transform: Transform, family: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    identity = transform.identity(batch, "cpu", torch.float64)
    noise = torch.randn(identity.shape, generator=generator, dtype=torch.float64)
    return identity + _PARAM_NOISE.get(family, 0.1) * noise


def build_workload(
    case: Case,
    device: torch.device | str = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    peers: Sequence[str] = PEERS,
    align_corners: bool = False,
    params: torch.Tensor | None = None,
) -> Workload:
    """The contenders of a warp case, on ``device``, with random inputs and near-identity parameters.

    Args:
        case: a warp case (not ``"train"``).
        device: where to run.
        dtype: floating dtype of inputs and parameters.
        seed: seed of the inputs and parameters.
        peers: which of :data:`PEERS` to build; a peer that does not apply to the
            family, is not installed, or (OpenCV, JAX) does not match torch's warp within
            :data:`PEER_TOLERANCE`, is skipped with a note in :attr:`Workload.notes`.
        align_corners: given to every contender.
        params: the ``(B, P)`` parameters to warp with, instead of random ones near the
            identity.
    """
    if case.family == "train":
        raise ValueError("the 'train' case has no warp workload; use build_training_step")
    peers = check_names("peers", peers, PEERS)
    device = torch.device(device)
    transform = get_transform(case.family)
    x64, params64, grad64 = _random_inputs(case, transform, seed, params)
    x = x64.to(device=device, dtype=dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = params64.to(device=device, dtype=dtype)
    grad_out = grad64.to(device=device, dtype=dtype)
    size = case.out_size

    def stn_run(x_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return warp(x_, p, transform, size, align_corners=align_corners)

    contenders = {"torchstn": Contender(stn_run, (x, _leaf(params)))}
    grid_fns: dict[str, Callable[[], torch.Tensor]] = {"torchstn": lambda: transform.grid(params, size, align_corners)}
    work = Workload(case, transform, x, params, grad_out, contenders, grid_fns)
    if "torch" in peers:
        _add_torch_peer(work, align_corners)
    if "kornia" in peers:
        kornia = _kornia_contender(case, transform, x, params64, size, align_corners)
        if isinstance(kornia, str):
            work.notes.append(kornia)
        else:
            work.contenders["kornia"] = kornia
    for name in ("opencv", "jax"):
        if name in peers:
            _add_foreign_peer(work, name, align_corners)
    work.notes += [  # (a column gone without a word, before)
        f"{name}: not timed in this run (left out of peers={peers}"
        + (f", as {PEER_FLAGS[name]} does)" if name in PEER_FLAGS else ")")
        for name in PEERS if name not in peers
    ]
    _add_warp_backends(work, align_corners)
    return work


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A contender's own copy of a tensor to differentiate with respect to."""
    return t.detach().clone().requires_grad_(True)


def _random_inputs(
    case: Case, transform: Transform, seed: int, params: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 ``(x, params, grad_out)`` of a warp case, drawn from ``seed`` (``params`` checked if given)."""
    generator = torch.Generator().manual_seed(seed)
    batch = case.shape[0]
    x = torch.rand(case.shape, generator=generator, dtype=torch.float64)
    if params is None:
        params64 = _random_params(transform, case.family, batch, generator)
    else:
        params64 = transform.check_params(params).detach().to("cpu", torch.float64)
        if params64.shape[0] != batch:
            raise ValueError(f"params must have shape ({batch}, {transform.num_params}), got {tuple(params.shape)}")
    grad_out = torch.randn(batch, case.shape[1], *case.out_size, generator=generator, dtype=torch.float64)
    return x, params64, grad_out


def _add_torch_peer(work: Workload, align_corners: bool) -> None:
    """``F.affine_grid + F.grid_sample`` (and its grid alone) where the family is affine, else a note why not."""
    case, transform, size = work.case, work.transform, work.case.out_size
    if case.family not in AFFINE_FAMILIES:
        work.notes.append(f"torch: F.affine_grid cannot represent {transform.name}; no plain-PyTorch peer")
        return
    if case.family in ("affine", "affine3d"):  # the parameters are the rows affine_grid takes
        rows = transform.ndim, transform.ndim + 1

        def torch_run(x_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return _peers.torch_affine_warp(x_, p.view(-1, *rows), size, align_corners)
    else:  # the user builds the 2x3 matrix of the family first (as warp does: the same work on both sides)

        def torch_run(x_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return _peers.torch_affine_warp(x_, transform.affine_rows(p), size, align_corners)

    work.contenders["torch"] = Contender(torch_run, (work.x, _leaf(work.params)))
    theta_rows = transform.affine_rows(work.params)
    work.grid_fns["torch"] = lambda: F.affine_grid(theta_rows, [*case.shape[:2], *size], align_corners)


def _add_warp_backends(work: Workload, align_corners: bool) -> None:
    """``warp`` with the fused kernel and with grid + ``F.grid_sample``, where the fused kernel covers the case."""
    transform, x, params, size, notes = work.transform, work.x, work.params, work.case.out_size, work.notes
    if isinstance(transform, MatrixTransform) and transform.ndim == 2 and fused_applies(x, "bilinear"):
        status = fused_status()
        if status.available:
            for name in ("fused", "torch"):

                def run(x_: torch.Tensor, p: torch.Tensor, backend: str = name) -> torch.Tensor:
                    return warp(x_, p, transform, size, align_corners=align_corners, backend=backend)

                work.warp_backends[f"warp:{name}"] = Contender(run, (x, _leaf(params)))
        else:
            notes.append(f"the fused kernel could not be built ({status.error}); no backend comparison")
    elif isinstance(transform, MatrixTransform) and transform.ndim == 3 and not (status := fused_status(ndim=3)).available:
        notes.append(f"the fused 3-D kernel could not be built ({status.error}): torchstn's volumes take grid + F.grid_sample")


def _kornia_contender(
    case: Case,
    transform: Transform,
    x: torch.Tensor,
    params64: torch.Tensor,
    size: tuple[int, ...],
    align_corners: bool,
) -> Contender | str:
    """kornia's warp for the case's family, or a note saying why there is none."""
    if not _peers.kornia_available():
        return "kornia: not installed (pip install 'torchstn[bench]'); kornia columns skipped"
    device, dtype = x.device, x.dtype
    if case.family == "affine3d":
        return (
            "kornia: warp_affine3d normalises its matrix corner-aligned only (kornia #4503), so it "
            "cannot do the align_corners=False work of the other contenders; skipped"
        )
    if isinstance(transform, MatrixTransform):
        matrix = _peers.pixel_matrix_dst_from_src(
            transform.matrix(params64), x.shape[2:], size, align_corners
        ).to(device=device, dtype=dtype)
        if transform.projective:

            def run(x_: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                return _peers.kornia_warp_perspective(x_, m, size, align_corners)

            return Contender(run, (x, _leaf(matrix)))

        def run_affine(x_: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return _peers.kornia_warp_affine(x_, m, size, align_corners)

        return Contender(run_affine, (x, _leaf(matrix[:, :2])))
    if isinstance(transform, ThinPlateSpline):
        if tuple(size) != tuple(x.shape[2:]):
            return "kornia: warp_image_tps keeps the input size; no peer for a resizing TPS case"
        controls = _peers.tps_controls(transform, x.shape[0], device=device, dtype=dtype)
        targets = params64.reshape(x.shape[0], -1, 2).to(device=device, dtype=dtype)

        def run_tps(x_: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _peers.kornia_tps(x_, controls, t, align_corners)

        return Contender(run_tps, (x, _leaf(targets)))
    return f"kornia: no warp for {transform.name}"


def _add_foreign_peer(work: Workload, name: str, align_corners: bool) -> None:
    """OpenCV's (``name="opencv"``) or JAX's warp, added where it runs and matches torch's; else a note why not."""
    why_not = _foreign_peer_unavailable(work, name)
    if why_not is not None:
        work.notes.append(why_not)
        return
    transform, size = work.transform, work.case.out_size
    full = transform.matrix(work.params.detach())
    matrix = (full if transform.projective else full[:, : transform.ndim]).contiguous()  # what F.affine_grid takes
    x = work.x.detach()
    try:  # installed is not working: a broken install (a jaxlib for another numpy, say) is a note too
        if name == "opencv":
            run, to_torch = _opencv.opencv_warp(x, matrix, size, align_corners, threads=torch.get_num_threads())
            contender = ForeignContender(run, lambda: to_torch(run()))
        else:
            contender = _jax_contender(work, matrix, align_corners)
        found = (contender.output(), *(contender.gradients() if contender.gradients is not None else ()))
    except (ImportError, RuntimeError) as err:
        why = f"{type(err).__name__}: {first_line(err)}"
        work.notes.append(f"{name}: installed but failed here ({why}); skipped")
        return
    expected = _torch_reference(work, matrix, align_corners, gradients=contender.gradients is not None)
    errors = {part: _peers.relative_error(a, e) for part, a, e in zip(PEER_TOLERANCE, found, expected)}
    wrong = [f"{part} {e:.2g} > {PEER_TOLERANCE[part]:g}" for part, e in errors.items() if e > PEER_TOLERANCE[part]]
    if wrong:
        work.notes.append(
            f"{name}: differs from torch's warp (max |peer - torch| / max(1, max |torch|): {', '.join(wrong)}): "
            "not the same work, not timed"
        )
        return
    work.contenders[name] = contender
    work.peer_errors[name] = errors


def _foreign_peer_unavailable(work: Workload, name: str) -> str | None:
    """Why OpenCV or JAX cannot do this case's work here, or ``None``."""
    transform, x = work.transform, work.x
    version = _opencv.opencv_version() if name == "opencv" else _jax.jax_version()
    if version is None:
        package = "'opencv-python-headless>=5'" if name == "opencv" else "'jax[cpu]'"  # (as the extra pins them)
        return f"{name}: not installed (pip install 'torchstn[bench]', or {package} alone); {name} columns skipped"
    if x.device.type != "cpu":
        return f"{name}: timed on the CPU only, not against a {x.device.type} run"
    if x.dtype != torch.float32:
        return f"{name}: timed in float32 only, this run is {x.dtype}"
    if not isinstance(transform, MatrixTransform) or transform.ndim not in (2, 3):
        return f"{name}: no {transform.name} warp here"
    if name == "opencv" and transform.ndim != 2:
        return "opencv: no 3-D warp"
    if name == "opencv" and x.shape[1] > 4:
        return f"opencv: warpAffine takes at most 4 channels, the case has {x.shape[1]}"
    return None


def _jax_contender(work: Workload, matrix: torch.Tensor, align_corners: bool) -> ForeignContender:
    """The ``jax.jit`` warp of :mod:`torchstn.bench._jax` on CPU copies of the image, matrix and output gradient."""
    import numpy as np

    jax = _jax.import_jax()
    cpu = jax.devices("cpu")[0]
    x, m, g = (jax.device_put(t.detach().cpu().numpy(), cpu) for t in (work.x, matrix, work.grad_out))
    forward_jit, backward_jit = _jax.jax_warp_and_vjp(work.case.out_size, align_corners)

    def forward() -> object:
        return forward_jit(x, m).block_until_ready()

    def backward() -> object:
        return jax.block_until_ready(backward_jit(x, m, g))

    def as_torch(a: object) -> torch.Tensor:
        return torch.tensor(np.asarray(a))

    return ForeignContender(
        forward, lambda: as_torch(forward()), backward, lambda: tuple(as_torch(t) for t in backward())
    )


def _torch_reference(
    work: Workload, matrix: torch.Tensor, align_corners: bool, *, gradients: bool
) -> tuple[torch.Tensor, ...]:
    """torch's warp of the case by ``matrix`` (``F.affine_grid + F.grid_sample``), and optionally its
    gradients wrt the image and the matrix for :attr:`Workload.grad_out`."""
    x, m = work.x.detach().clone().requires_grad_(gradients), matrix.clone().requires_grad_(gradients)
    out = _peers.torch_matrix_warp(x, m, work.case.out_size, align_corners)
    if not gradients:
        return (out.detach(),)
    return (out.detach(), *torch.autograd.grad(out, (x, m), work.grad_out))


def build_training_step(
    case: Case, device: torch.device | str = "cpu", *, seed: int = 0
) -> tuple[dict[str, Callable[[], None]], str]:
    """One SGD step (forward, cross-entropy, backward, update) of the ST-CNN and of the bare CNN.

    The bare CNN is timed twice: as it is (``"cnn"``) and with the gradient with
    respect to its input (``"cnn+dx"``), which a network pays for any module in front
    of it that learns (a transformer needs the gradient of its output). The ST
    overhead over ``"cnn"`` therefore splits into that gradient (``cnn+dx`` over
    ``cnn``) and the transformer itself: localisation net, grid and sampler
    (``torchstn`` over ``cnn+dx``).

    Returns:
        ``({"torchstn": st_cnn_step, "cnn": cnn_step, "cnn+dx": cnn_dx_step}, source)``
        where ``source`` says which networks were built (see
        :func:`torchstn.bench._models.training_models`).
    """
    from torchstn.bench._models import training_models

    device = torch.device(device)
    torch.manual_seed(seed)
    st_cnn, cnn, source = training_models(case.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(case.shape, generator=generator).to(device)
    x_dx = x.clone().requires_grad_(True)
    y = torch.randint(0, 10, (case.shape[0],), generator=generator).to(device)

    def make_step(model: torch.nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            inputs.grad = None
            F.cross_entropy(model(inputs), y).backward()
            optimizer.step()

        return step

    steps = {"torchstn": make_step(st_cnn, x), "cnn": make_step(cnn, x), "cnn+dx": make_step(cnn, x_dx)}
    return steps, source
