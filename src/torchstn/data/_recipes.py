r"""The distorted-MNIST recipes: how each sample's transformation is drawn and rendered.

Each recipe splits generation in two steps:

* :meth:`Recipe.draw` makes every random choice of a whole split at once (vectorised,
  from one seeded stream): the per-sample parameters ``(N, P)`` of a torchstn
  transform family, which source digit(s) each sample shows, and kind-specific
  extras (the clutter patches).
* :meth:`Recipe.render` turns any subset of those draws into images, batched through
  :func:`torchstn.warp` (no other warping code), quantised to uint8.

So a fixed data set is ``render(draw(...), all)`` and an online one renders the
same draws one batch at a time, and re-warping an original digit with a sample's
stored parameters reproduces that sample.

Convention:
    Parameters map canvas (output) coordinates to digit (input) coordinates, both
    normalised to [-1, 1], x along the width, ``align_corners=False``: ``sample =
    warp(original / 255, params, transform, size=(canvas, canvas))``. A digit shown
    at its natural size on a canvas of ``W`` pixels has map scale ``k = W / 28``.

Keeping the digit whole: where ``keep_inside`` is on, a sample whose digit would
reach past the canvas (its bilinear footprint would cross the box of
:func:`~torchstn.data._geometry.canvas_bound` for the recipe's ``border``) is
redrawn, up to ``max_rounds`` times (rejection sampling: the distribution is the
paper's, conditioned on the digit staying whole), after which the recipe's
undistorted fallback is used. ``rts``, ``addition`` and ``3d`` need no rejection: the
position is drawn uniformly among those that keep the digit inside. Where no position
does (a canvas too small for the drawn scale and angle; never at the default options),
the digit is centred and cut by the canvas edge, counted in ``Draw.stats["unfit"]`` and
reported by :meth:`Recipe.warn_unfit`.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from torchstn._validation import check_bool, check_choice, check_int, check_number
from torchstn.data._geometry import (
    canvas_bound,
    digit_outline,
    fits_matrix,
    fits_tps,
    forward_points,
    homography_from_points,
    uniform,
)
from torchstn.sampling import MODES, sample, warp
from torchstn.transforms import Affine3D, Attention, MatrixTransform, Projective, Similarity, ThinPlateSpline, Transform

__all__ = ["KINDS", "Draw", "Recipe", "Sources", "get_recipe", "quantize"]

_DIGIT = 28  # MNIST side, pixels
#: options shared by the recipes that warp one digit onto a 28x28 canvas and keep it whole
_WHOLE_28 = {"canvas": 28, "border": 0.0, "mode": "bilinear", "keep_inside": True, "max_rounds": 64}
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (round half to even, clamped); ``images`` is overwritten."""
    return images.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class Sources:
    """The undistorted digits of one split, with what the recipes need of them.

    Args:
        images: ``(M, H, W)`` uint8.
        labels: ``(M,)`` int64.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the images and labels (identifies the source data in cache keys)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for t in (self.images, self.labels):
                digest.update(str((tuple(t.shape), str(t.dtype))).encode())
                digest.update(memoryview(t.contiguous().numpy()).cast("B"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __len__(self) -> int:
        return self.images.shape[0]

    def floats(self, index: torch.Tensor) -> torch.Tensor:
        """Digits ``index`` as ``(n, 1, H, W)`` float32 in [0, 1]."""
        return self.images[index].unsqueeze(1).float().div_(255)

    def outline(self, index: torch.Tensor, dilate: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~torchstn.data._geometry.digit_outline` of the digits ``index``."""
        return digit_outline(self.images[index], dilate)

    def boxes(self, index: torch.Tensor) -> torch.Tensor:
        """Ink bounding boxes of the digits ``index`` (any shape ``S``): ``(*S, 4)`` int64,
        first row, last row, first col, last col."""
        ink = (self.images[index.reshape(-1)] > 0).to(torch.uint8)
        rows, cols = ink.amax(2), ink.amax(1)
        h, w = ink.shape[1:]
        boxes = torch.stack(
            [rows.argmax(1), h - 1 - rows.flip(1).argmax(1), cols.argmax(1), w - 1 - cols.flip(1).argmax(1)], 1
        )
        return boxes.reshape(*index.shape, 4)


@dataclass
class Draw:
    """Every random choice of a split.

    Attributes:
        params: ``(N, P)`` float32 parameters (for ``addition``, ``(N, 8)``: the
            :class:`~torchstn.Similarity` of channel 0, then of channel 1).
        source: ``(N,)`` int64 index of the source digit (``(N, 2)`` for ``addition``).
        labels: ``(N,)`` int64 class of each sample.
        extras: kind-specific tensors, first axis ``N`` (e.g. the clutter patches).
        stats: counts of redrawn and fallback samples, or (``rts``, ``addition``, ``3d``) of the
            digits ``placed`` and of those ``unfit``: cut by the canvas edge (see :meth:`Recipe.warn_unfit`).
    """

    params: torch.Tensor
    source: torch.Tensor
    labels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def cat(draws: list[Draw]) -> Draw:
        """The draws of consecutive blocks as one."""
        stats: dict[str, int] = {}
        for d in draws:
            for k, v in d.stats.items():
                stats[k] = stats.get(k, 0) + v
        return Draw(
            torch.cat([d.params for d in draws]),
            torch.cat([d.source for d in draws]),
            torch.cat([d.labels for d in draws]),
            {k: torch.cat([d.extras[k] for d in draws]) for k in draws[0].extras},
            stats,
        )


def _check_range(name: str, value: object, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
    a, b = (check_number(name, v, low, high) for v in value)
    if a > b:
        raise ValueError(f"{name} must have low <= high, got {tuple(value)!r}")
    return a, b


def _check_pair(name: str, value: object) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (rows, cols) pair, got {value!r}")
    return check_int(name, value[0], 2), check_int(name, value[1], 2)


def _check_whole(name: str, value: float) -> float:
    """A number of whole pixels (``1`` or ``1.0``), as a float; ``0.4`` is refused, not rounded."""
    if value != round(value):
        raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
    return float(value)


#: option name -> its check (returns the normalised value); every recipe option is listed
_OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "angle": lambda n, v: check_number(n, v, 0.0, 180.0),
    "scale": lambda n, v: _check_range(n, v, 0.05, 20.0),
    "sigma": lambda n, v: check_number(n, v, 0.0, 100.0),
    "translation": lambda n, v: check_number(n, v, 0.0, 10.0),
    "canvas": lambda n, v: check_int(n, v, 8),
    "border": lambda n, v: _check_whole(n, check_number(n, v, -8.0, 8.0)),
    "mode": lambda n, v: check_choice(n, v, MODES),
    "keep_inside": check_bool,
    "units": lambda n, v: check_choice(n, v, ("centres", "edges")),
    "moved": lambda n, v: check_choice(n, v, ("source", "target")),
    "max_rounds": lambda n, v: check_int(n, v, 0),
    "control": _check_pair,
    "patches": lambda n, v: check_int(n, v, 0),
    "patch_size": lambda n, v: check_int(n, v, 1),
    "size": lambda n, v: check_int(n, v, 4),
    "thickness": lambda n, v: check_int(n, v, 1),
    "supersample": lambda n, v: check_int(n, v, 1, 16),
}
#: options a recipe that renders with :meth:`Recipe._warp` takes beyond its defaults, each with the
#: value that renders as before: that value is left out of the options (and :meth:`Recipe.describe`),
#: so the data, its caches and the records that name it keep their identity
_RENDERING = {"supersample": 1}


class _Summary:
    """A recipe's one-line description: a ``str.format`` template of its options (``{canvas}``,
    ``{scale[0]:g}``). Read on the recipe class (``torchstn data list``) it states the defaults,
    on a recipe (a preview's title) that recipe's options: a title once said "on 60x60" over the
    36x36 images of ``canvas=36``."""

    def __init__(self, template: str) -> None:
        self.template = template

    def __get__(self, recipe: Recipe | None, cls: type[Recipe]) -> str:
        return self.template.format(**(cls.defaults if recipe is None else recipe.options))


class Recipe:
    """A distortion of MNIST: options, parameter drawing and batched rendering.

    Subclasses set :attr:`kind`, :attr:`version` (bumped whenever the output for the
    same options and seed changes, which invalidates caches), :attr:`defaults` and
    implement :meth:`_draw` (and :meth:`render` where one warp per sample is not enough).

    Args:
        **options: overrides of :attr:`defaults`; unknown names raise ``TypeError``.
    """

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    #: takes ``supersample`` (the recipes that render every sample with one 2-D :meth:`_warp`):
    #: each canvas pixel the mean of ``supersample`` x ``supersample`` bilinear samples (area
    #: antialiasing); 1, the default, is one sample per pixel, the rendering of every committed result
    supersamples: ClassVar[bool] = True
    #: one-line description of the law, with the options' values (see :class:`_Summary`)
    summary: ClassVar[_Summary] = _Summary("")
    defaults: ClassVar[dict[str, Any]] = {}
    #: ``{version: options}``: an earlier :attr:`version`'s samples are drawn by this one with these
    #: options over that version's own (``p``'s version 1 by ``moved="target"``); a version not named
    #: is drawn no more (see :meth:`options_for`)
    earlier: ClassVar[dict[int, dict[str, Any]]] = {}
    num_classes: ClassVar[int] = 10
    channels: ClassVar[int] = 1

    def __init__(self, **options: Any) -> None:
        valid = set(self.defaults) | (set(_RENDERING) if self.supersamples else set())
        unknown = sorted(set(options) - valid)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for kind {self.kind!r}; valid options: {sorted(valid)}")
        merged = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}
        checked = self._check(merged)
        self.options: dict[str, Any] = {k: v for k, v in checked.items() if not (k in _RENDERING and v == _RENDERING[k])}

    # -- options ---------------------------------------------------------------------------------
    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        """Validate every option by its name (see :data:`_OPTION_CHECKS`); subclasses add cross-checks."""
        return {name: _OPTION_CHECKS[name](name, value) for name, value in o.items()}

    @property
    def canvas(self) -> int:
        return int(self.options["canvas"])

    @property
    def k(self) -> float:
        """Map scale of a digit shown at its natural size: ``canvas / 28``."""
        return self.canvas / _DIGIT

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.canvas, self.canvas)

    @property
    def transform(self) -> Transform | None:
        """The family the parameters belong to (``None`` if not a single family)."""
        return None

    @property
    def reach(self) -> int:
        """How many pixels beyond a point the recipe's sampler reads: 2 for bicubic (its 4x4
        footprint), else 1. The whole-digit tests dilate the digit's ink by it."""
        return 2 if self.options.get("mode") == "bicubic" else 1

    def describe(self) -> dict[str, Any]:
        """The recipe's identity: kind, version and every option (JSON-serialisable); a reach other
        than 1 too (bicubic draws were tested with bilinear's reach until 2026-12-04 and left ink of
        up to 3/255 outside: sets cached before then are keyed apart)."""
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.options.items())}
        described = {"kind": self.kind, "version": self.version, "options": options}
        if self.reach != 1:
            described["reach"] = self.reach
        return described

    @classmethod
    def options_for(cls, law: Mapping[str, Any]) -> dict[str, Any] | None:
        """The options under which this torchstn draws the samples of ``law`` (a :meth:`describe` of
        this kind, as a run recorded it, perhaps of an earlier version), or ``None`` where it draws
        them no more (a version not in :attr:`earlier`, a newer one).

        Example:
            >>> stn.data.KINDS["p"].options_for({"kind": "p", "version": 1, "options": {"sigma": 5.0}})
            {'sigma': 5.0, 'moved': 'target'}
        """
        version, options = law.get("version"), dict(law.get("options", {}))
        if law.get("kind") != cls.kind:
            raise ValueError(f"a law of {law.get('kind')!r} is not one of {cls.kind!r}")
        if version == cls.version:
            return options
        return {**options, **cls.earlier[version]} if version in cls.earlier else None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{type(self).__name__}({opts})"

    # -- drawing ---------------------------------------------------------------------------------
    def draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        """Every random choice for the samples ``index`` of a split (one block), from ``generator``.

        Sample ``i`` shows source digit ``i`` (and, for ``addition``, another one).
        """
        return self._draw(sources, index, generator)

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        raise NotImplementedError

    def _rejection(
        self,
        index: torch.Tensor,
        propose: Callable[[torch.Tensor], torch.Tensor],
        fits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        fallback: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, int]]:
        """Draw parameters for the samples ``index``, redrawing those that do not fit (vectorised rounds).

        ``propose(rows)`` draws for the rows ``rows`` of ``index``, ``fits(params, rows)``
        tests them, ``fallback(rows)`` is used after ``max_rounds`` failed rounds.
        """
        index = torch.as_tensor(index)
        rows = torch.arange(len(index))
        params = propose(rows)
        if not self.options.get("keep_inside", False):
            return params, {"redrawn": 0, "fallback": 0}
        bad = ~fits(params, rows)
        redrawn = int(bad.sum())
        for _ in range(self.options["max_rounds"]):
            if not bad.any():
                break
            todo = bad.nonzero()[:, 0]
            candidate = propose(todo)
            ok = fits(candidate, todo)
            params[todo[ok]] = candidate[ok]
            bad[todo[ok]] = False
        left = bad.nonzero()[:, 0]
        if len(left):
            params[left] = fallback(left)
        return params, {"redrawn": redrawn, "fallback": len(left)}

    def _fits_matrix(
        self, transform: MatrixTransform, sources: Sources, index: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fits(params, rows)`` for the digits ``index``: outline carried onto the canvas."""
        bound = canvas_bound(self.canvas, self.options["border"]) + 1e-7
        points, valid = sources.outline(index, self.reach)

        def fits(params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return fits_matrix(transform, params, points[rows], valid[rows], bound)

        return fits

    def warn_unfit(self, stats: Mapping[str, int], what: str) -> None:
        """Warn if ``stats`` (of :meth:`draw`) count digits that no position keeps whole on the canvas.

        The recipes that place a digit among the positions that keep it inside (``rts``,
        ``addition``, ``3d``) centre it where there is none, at the drawn scale and angle, and
        the canvas edge cuts it. Never at the default options; a smaller canvas or a larger
        scale (or ``size``) makes it happen. ``what`` names the draws (the set and split).
        """
        unfit = int(stats.get("unfit", 0))
        if not unfit:
            return
        placed = stats.get("placed")
        of = f" of the {placed:,} digits drawn" if placed else " digits"
        shape = "x".join(map(str, self.input_shape[1:]))
        smaller = f"a scale range below {tuple(self.options['scale'])}"
        if "size" in self.options:
            smaller += f" or a size below {self.options['size']}"
        warnings.warn(
            f"{what}: {unfit:,}{of} fit nowhere on the {shape} canvas at their drawn scale and angle, so the "
            f"canvas edge cuts them (the rest are whole): to keep every digit whole, give a canvas larger than "
            f"{self.canvas} or {smaller}", UserWarning, stacklevel=3,
        )

    # -- rendering -------------------------------------------------------------------------------
    def originals(self, sources: Sources, source: torch.Tensor) -> torch.Tensor:
        """What the parameters warp into a sample: the digits ``source`` as ``(n, 1, 28, 28)``
        float32 in [0, 1] (a volume for ``3d``), so ``warp(originals, params, transform,
        size=input_shape[1:])`` renders the samples."""
        return sources.floats(source)

    def render(self, sources: Sources, draw: Draw, index: torch.Tensor) -> torch.Tensor:
        """Samples ``index`` of ``draw`` as uint8 ``(n, C, canvas, canvas)``."""
        x = self.originals(sources, draw.source[index])
        return quantize(self._warp(x, draw.params[index]))

    def _warp(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        s, c = self.options.get("supersample", 1), self.canvas
        out = self._sampled(x, params, (c * s, c * s), self.options.get("mode", "bilinear"))
        return out if s == 1 else F.avg_pool2d(out, s)

    def _sampled(self, x: torch.Tensor, params: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        return warp(x, params, self.transform, size=size, mode=mode)


def _f32(params: torch.Tensor) -> torch.Tensor:
    """Round float64 parameters through float32: what is checked is exactly what is stored."""
    return params.float().double()


# ------------------------------------------------------------------------------------------------
class Rotation(Recipe):
    """``r``: rotation U(-90°, +90°) about the centre (STN paper, appendix A).

    Choices the paper leaves open: the canvas is 28x28 (the paper's input size),
    bilinear interpolation, and a sample whose rotated digit would reach past the
    canvas edge gets a new angle (``keep_inside``: about 6 % of first draws on 28x28, so
    the angle law is slightly thinned near ±45° for wide digits; ``canvas=36`` needs no
    redraw at all).
    ``border = 0`` only asks that nothing falls off the canvas.

    Parameters: :class:`~torchstn.Similarity` ``(k, α, 0, 0)`` with ``k = canvas / 28``
    and ``α`` in radians, ``|α| <= angle``; a positive α turns the digit counterclockwise on
    screen.
    """

    kind = "r"
    summary = _Summary("rotation U(-{angle:g}°, {angle:g}°) about the centre, {canvas}x{canvas}")
    defaults = {"angle": 90.0, **_WHOLE_28}

    @property
    def transform(self) -> Similarity:
        return Similarity()

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        k, a = self.k, math.radians(self.options["angle"])

        def propose(index: torch.Tensor) -> torch.Tensor:
            alpha = uniform(len(index), -a, a, generator)
            zero = torch.zeros_like(alpha)
            return _f32(torch.stack([torch.full_like(alpha, k), alpha, zero, zero], 1))

        def fallback(index: torch.Tensor) -> torch.Tensor:
            return self.transform.identity(len(index), "cpu", torch.float64) * torch.tensor([k, 1, 1, 1])

        params, stats = self._rejection(index, propose, self._fits_matrix(self.transform, sources, index), fallback)
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)


class RotatedPSTN(Rotation):
    """``rotated`` (P-STN): rotation U(-180°, 180°) about the centre, 28x28.

    As :class:`Rotation` with the full circle; the P-STN small-data folds are
    :func:`torchstn.data.pstn_fold`. Parameters: :class:`~torchstn.Similarity` ``(k, α, 0, 0)``.
    """

    kind = "rotated"
    summary = _Summary("rotation U(-{angle:g}°, {angle:g}°) about the centre, {canvas}x{canvas} "
                       "(P-STN; folds of 30..10000)")
    defaults = {**Rotation.defaults, "angle": 180.0}


class RTS(Recipe):
    """``rts``: rotation U(-45°, 45°), scale U(0.7, 1.2), random position on a 42x42 canvas.

    The position is uniform among those that keep the whole digit inside the canvas
    with a blank outermost pixel ring (``border = 1``): the digit's outline is carried
    onto the canvas, and the shift is drawn uniformly in the range that keeps it inside,
    so no sample is rejected and the angle and scale keep their uniform laws. A digit that
    fits nowhere (a canvas too small for its drawn scale and angle: none at the default
    options, 192 of 2,048 at ``canvas=28``) is centred and cut by the canvas edge, with a
    warning (:meth:`Recipe.warn_unfit`).

    Parameters: :class:`~torchstn.Similarity` ``(k / scale, α, tx, ty)``, ``k = canvas / 28``;
    the digit's own scale is ``k / params[:, 0]``.
    """

    kind = "rts"
    summary = _Summary("rotation ±{angle:g}°, scale {scale[0]:g}-{scale[1]:g}, random position on {canvas}x{canvas}")
    defaults = {"angle": 45.0, "scale": (0.7, 1.2), "canvas": 42, "border": 1.0, "mode": "bilinear"}

    @property
    def transform(self) -> Similarity:
        return Similarity()

    def place(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(params (n, 4) float64, fitted (n,) bool)`` for the digits ``index``."""
        n, k = len(index), self.k
        a = math.radians(self.options["angle"])
        alpha = uniform(n, -a, a, generator)
        scale = uniform(n, *self.options["scale"], generator)
        u = uniform(n, 0.0, 1.0, generator, 2)
        s_map = k / scale
        centred = _f32(torch.stack([s_map, alpha, torch.zeros_like(alpha), torch.zeros_like(alpha)], 1))
        points, valid = sources.outline(index, self.reach)
        mapped, _ = forward_points(Similarity(), centred, points)
        big = torch.finfo(torch.float64).max
        low = torch.where(valid[..., None], mapped, big).amin(1)  # (n, 2): min x, min y
        high = torch.where(valid[..., None], mapped, -big).amax(1)
        bound = canvas_bound(self.canvas, self.options["border"])
        lo, hi = -bound - low, bound - high  # allowed shift d, per axis
        fitted = (lo <= hi).all(1)
        shift = torch.where(lo <= hi, lo + u * (hi - lo), 0.5 * (lo + hi))
        linear = Similarity().matrix(centred)[:, :2, :2]
        t = -(linear @ shift[..., None])[..., 0]  # output g reads input A (g - d)
        return _f32(torch.cat([centred[:, :2], t], 1)), fitted

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        params, fitted = self.place(sources, index, generator)
        stats = {"placed": len(index), "unfit": int((~fitted).sum())}
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)


class ProjectiveMNIST(Recipe):
    """``p``: scale U(0.75, 1.0), then each corner moved by N(0, 5 px); the homography through them.

    The paper's law does not say which frame's corners move. ``moved="source"`` (the default since
    2026-12-05, recipe version 2) reads it in the paper's own convention, where a transformation
    maps the output's (target's) points to the input's (source's) that they sample: the canvas shows
    the digit scaled by U(0.75, 1.0) about the centre, and the four points of the digit its corners
    sample are each moved by N(0, σ) digit pixels (as ``e`` moves its control points' targets and
    ``perturbed`` its corners). ``moved="target"`` moves instead where the scaled digit's corners land
    on the canvas (σ in canvas pixels: version 1's law, the same draws). The two differ in their strongest
    distortions: with the whole-digit redraw, 0.02% of the test digits are squeezed below 0.3 of
    their extent across the other axis by ``"source"`` against 3.40% by ``"target"``, which flattens
    them to a line (docs/data.md). Choices: 28x28 canvas, bilinear, and draws whose digit would reach
    past the canvas are redrawn (``keep_inside``: 25 % of the first draws of the training
    split, seed 0; 26 % with ``"target"``).

    Parameters: :class:`~torchstn.Projective` (canvas -> digit homography, ``H[2, 2] = 1``).
    """

    kind = "p"
    version = 2
    earlier = {1: {"moved": "target"}}
    summary = _Summary("scale {scale[0]:g}-{scale[1]:g}, corners moved by N(0, {sigma:g} px) in the {moved} frame, "
                       "projective, {canvas}x{canvas}")
    defaults = {"scale": (0.75, 1.0), "sigma": 5.0, "moved": "source", **_WHOLE_28}

    @property
    def transform(self) -> Projective:
        return Projective()

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        k = self.k
        corners = torch.tensor(_CORNERS, dtype=torch.float64)
        source = self.options["moved"] == "source"
        sigma = self.options["sigma"] * 2.0 / (_DIGIT if source else self.canvas)  # digit or canvas pixels

        def propose(index: torch.Tensor) -> torch.Tensor:
            m = len(index)
            scale = uniform(m, *self.options["scale"], generator)[:, None, None]
            noise = sigma * torch.randn(m, 4, 2, generator=generator, dtype=torch.float64)
            if source:  # the canvas's corners -> the digit's points they sample, moved
                h = homography_from_points(corners.expand(m, -1, -1), k * corners / scale + noise)
            else:  # where the digit's corners land on the canvas, moved -> the digit's corners
                h = homography_from_points(scale * corners / k + noise, corners.expand(m, -1, -1))
            return _f32(h.reshape(m, 9)[:, :8])

        def fallback(index: torch.Tensor) -> torch.Tensor:
            s = k / self.options["scale"][0]
            h = torch.diag(torch.tensor([s, s, 1.0], dtype=torch.float64)).reshape(9)[:8]
            return h.expand(len(index), -1).clone()

        params, stats = self._rejection(index, propose, self._fits_matrix(self.transform, sources, index), fallback)
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)


class PerturbedICSTN(ProjectiveMNIST):
    """``perturbed`` (IC-STN): corners moved by N(0, 0.25) plus a shared translation N(0, 0.25).

    In the authors' units (``units="centres"``, the default): their [-1, 1] spans the centres
    of the digit's corner pixels (0 to 27, ``align_corners=True``), 13.5 pixels per unit where
    torchstn's spans the image's edges (14 pixels per unit): σ = 3.375 pixels. The canvas's
    corner pixel centres are sent to the perturbed positions in the digit (a canvas -> digit
    homography), as in Lin & Lucey's perturbed MNIST. ``units="edges"`` draws the law in
    torchstn's units, 3.7% wider (σ = 3.5 pixels): the law until 2026-12-04 (recipe version 1).
    The default is the paper's law unconditioned, so parts of some digits leave the canvas (as
    in the authors' data; the classifier must cope).
    ``keep_inside=True`` redraws such samples instead (55.5 % of the first draws of the training
    split, seed 0; 57.1 % with ``units="edges"``), so the kept perturbations are markedly smaller
    than the paper's.

    Parameters: :class:`~torchstn.Projective`.
    """

    kind = "perturbed"
    version = 2
    earlier = {1: {"units": "edges"}}
    summary = _Summary("IC-STN: corners N(0, {sigma:g}) + translation N(0, {translation:g}), projective, "
                       "{canvas}x{canvas}")
    defaults = {"sigma": 0.25, "translation": 0.25, **_WHOLE_28, "keep_inside": False, "units": "centres"}

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        k = self.k
        # the canvas's corners (their pixels' centres in the authors' units) in torchstn's units, and
        # the law's unit in the digit's
        centres = self.options["units"] == "centres"
        corners = torch.tensor(_CORNERS, dtype=torch.float64) * ((self.canvas - 1) / self.canvas if centres else 1.0)
        unit = (_DIGIT - 1) / _DIGIT if centres else 1.0

        def propose(index: torch.Tensor) -> torch.Tensor:
            m = len(index)
            noise = self.options["sigma"] * torch.randn(m, 4, 2, generator=generator, dtype=torch.float64)
            shift = self.options["translation"] * torch.randn(m, 1, 2, generator=generator, dtype=torch.float64)
            h = homography_from_points(corners.expand(m, -1, -1), k * corners + unit * (noise + shift))
            return _f32(h.reshape(m, 9)[:, :8])

        def fallback(index: torch.Tensor) -> torch.Tensor:
            h = torch.diag(torch.tensor([k, k, 1.0], dtype=torch.float64)).reshape(9)[:8]
            return h.expand(len(index), -1).clone()

        params, stats = self._rejection(index, propose, self._fits_matrix(self.transform, sources, index), fallback)
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)


class Elastic(Recipe):
    """``e``: elastic warp, a 4x4 thin-plate-spline control grid, each point moved by N(0, σ), σ = 1.5 px.

    The control points lie on a regular grid over the canvas; their targets in the digit
    are moved by N(0, σ) digit pixels per axis. Choices: 28x28 canvas, bilinear, and
    draws whose digit would reach past the canvas are redrawn (``keep_inside``: about 8 %
    of first draws; checked by rendering a ring of ``canvas / 4`` pixels around the canvas).

    Parameters: :class:`~torchstn.ThinPlateSpline` ``(control=(4, 4))``, the interleaved
    digit-frame targets ``x0, y0, x1, y1, ...``.
    """

    kind = "e"
    # (1: a batch's thin-plate grids in one matmul, 1/255 off a digit rendered alone in 0.3% of digits; 2: the fit
    # test rendered bilinear whatever the mode, and kept a digit warped wholly off the canvas: other draws for
    # mode="nearest" or "bicubic" and large sigma, the defaults' unchanged)
    version = 3
    summary = _Summary("thin-plate spline, {control[0]}x{control[1]} control points moved by N(0, {sigma:g} px), "
                       "{canvas}x{canvas}")
    defaults = {"sigma": 1.5, "control": (4, 4), **_WHOLE_28}

    @property
    def transform(self) -> ThinPlateSpline:
        return ThinPlateSpline(control=tuple(self.options["control"]))

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        k = self.k
        tps = self.transform
        base = tps.identity(device="cpu", dtype=torch.float64) * k
        sigma = self.options["sigma"] * 2.0 / _DIGIT

        def propose(index: torch.Tensor) -> torch.Tensor:
            noise = sigma * torch.randn(len(index), tps.num_params, generator=generator, dtype=torch.float64)
            return _f32(base + noise)

        def fits(params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return fits_tps(tps, params.float(), sources.floats(index[rows]), self.canvas, self.options["border"],
                            max(2, self.canvas // 4), mode=self.options["mode"])

        def fallback(index: torch.Tensor) -> torch.Tensor:
            return base.expand(len(index), -1).clone()

        params, stats = self._rejection(index, propose, fits, fallback)
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)

    def _sampled(self, x: torch.Tensor, params: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        # each digit's grid computed alone: the BLAS sums the rows of a batch of one to three in
        # another order than those of a larger batch (a matrix-vector kernel for one), so a digit
        # rendered alone, as an online set's item is, was 1/255 off the same digit of the fixed set
        # in 11 of 2,048 (the thin-plate grid is a matmul; the matrix families' fused kernel
        # computes each point from θ alone)
        if len(params) == 0:
            return super()._sampled(x, params, size, mode)
        tps = self.transform  # (a new spline at each access)
        grid = torch.cat([tps.grid(p, size, check=False) for p in params.split(1)])  # (21 µs a digit)
        return sample(x, grid, mode=mode)


class Cluttered(Recipe):
    """``cluttered``: the digit at a random position on a 60x60 canvas plus 6 random 6x6 patches.

    The 28x28 digit is placed at a uniform integer offset, whole inside the canvas (so it
    is copied exactly, not resampled). Each clutter patch is cut from another digit of
    the same split, centred on a pixel of that digit's ink bounding box (so patches are
    rarely blank), and pasted at a uniform integer position; overlaps keep the maximum.

    Parameters: :class:`~torchstn.Attention` ``(k, tx, ty)``, ``k = canvas / 28``; re-warping
    the original gives the digit layer, and ``extras`` hold the patches:
    ``clutter_source (N, patches)``, ``clutter_crop (N, patches, 2)`` (row, col of the
    patch in its source digit) and ``clutter_at (N, patches, 2)`` (row, col on the canvas).
    """

    kind = "cluttered"
    supersamples = False
    summary = _Summary("digit at a random position on {canvas}x{canvas} plus {patches} random "
                       "{patch_size}x{patch_size} patches of other digits")
    defaults = {"canvas": 60, "patches": 6, "patch_size": 6}

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        out = super()._check(o)
        if out["canvas"] < _DIGIT or out["patch_size"] > _DIGIT:
            raise ValueError(
                f"cluttered needs canvas >= {_DIGIT} and patch_size <= {_DIGIT}, "
                f"got canvas={out['canvas']} and patch_size={out['patch_size']}"
            )
        return out

    @property
    def transform(self) -> Attention:
        return Attention()

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        n, m, w, k = len(index), len(sources), self.canvas, self.k
        count, size = self.options["patches"], self.options["patch_size"]
        offset = torch.randint(0, w - _DIGIT + 1, (n, 2), generator=generator)  # (row, col)
        centre = (2.0 * (offset.double() + _DIGIT / 2) / w - 1).flip(1)  # (x, y)
        params = torch.cat([torch.full((n, 1), k, dtype=torch.float64), -k * centre], 1)
        other = (index[:, None] + torch.randint(1, max(m, 2), (n, count), generator=generator)) % m
        box = sources.boxes(other)  # (n, count, 4)
        u = torch.rand(n, count, 2, generator=generator, dtype=torch.float64)
        low, high = box[..., 0::2], box[..., 1::2]  # (row0, col0), (row1, col1)
        centres = low + (u * (high - low + 1)).long().clamp_max(high - low)
        crop = (centres - size // 2).clamp(0, _DIGIT - size)
        at = torch.randint(0, w - size + 1, (n, count, 2), generator=generator)
        extras = {"clutter_source": other, "clutter_crop": crop, "clutter_at": at}
        return Draw(_f32(params).float(), index.clone(), sources.labels[index], extras=extras)

    def render(self, sources: Sources, draw: Draw, index: torch.Tensor) -> torch.Tensor:
        m, w, size = len(index), self.canvas, self.options["patch_size"]
        digit = quantize(warp(sources.floats(draw.source[index]), draw.params[index], self.transform, size=(w, w)))
        other = draw.extras["clutter_source"][index]
        crop = draw.extras["clutter_crop"][index]
        at = draw.extras["clutter_at"][index]
        count = other.shape[1]
        if count == 0:
            return digit
        r = torch.arange(size)
        rows = crop[..., 0, None, None] + r[:, None]  # (m, count, size, 1)
        cols = crop[..., 1, None, None] + r[None, :]  # (m, count, 1, size)
        patches = sources.images[other[..., None, None], rows, cols]  # (m, count, size, size)
        target = (at[..., 0, None, None] + r[:, None]) * w + (at[..., 1, None, None] + r[None, :])
        flat = digit.reshape(m, w * w)
        flat = flat.scatter_reduce(1, target.reshape(m, -1), patches.reshape(m, -1), reduce="amax")
        return flat.reshape(m, 1, w, w)


class Addition(RTS):
    """``addition``: two digits, each RTS-distorted on its own 42x42 channel; the label is their sum.

    Channel 0 shows the sample's own digit, channel 1 another digit of the split drawn
    uniformly; each is placed as in :class:`RTS` (a digit that fits nowhere is cut, with a
    warning). 19 classes (0..18).

    Parameters: ``(N, 8)``, the :class:`~torchstn.Similarity` of channel 0 then of channel 1
    (``transform`` is ``None``: not a single map); ``source`` is ``(N, 2)``.
    """

    kind = "addition"
    supersamples = False
    summary = _Summary("two RTS digits on two {canvas}x{canvas} channels, label = their sum (19 classes)")
    num_classes = 19
    channels = 2

    @property
    def transform(self) -> None:  # type: ignore[override]
        return None

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        n, m = len(index), len(sources)
        first = index.clone()
        second = (first + torch.randint(1, max(m, 2), (n,), generator=generator)) % m
        p0, f0 = self.place(sources, first, generator)
        p1, f1 = self.place(sources, second, generator)
        source = torch.stack([first, second], 1)
        labels = sources.labels[first] + sources.labels[second]
        stats = {"placed": 2 * n, "unfit": int((~f0).sum() + (~f1).sum())}
        return Draw(torch.cat([p0, p1], 1).float(), source, labels, stats=stats)

    def render(self, sources: Sources, draw: Draw, index: torch.Tensor) -> torch.Tensor:
        m = len(index)
        x = sources.floats(draw.source[index].reshape(-1))  # (2m, 1, 28, 28), channel-major per sample
        params = draw.params[index].reshape(2 * m, 4)
        y = warp(x, params, Similarity(), size=(self.canvas, self.canvas), mode=self.options["mode"])
        return quantize(y.reshape(m, 2, self.canvas, self.canvas))


def _rotations(angles: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` rotations ``R_z R_y R_x`` from ``(n, 3)`` angles about x, y and z (radians)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def rot(i: int, j: int, k: int) -> torch.Tensor:  # about axis i: rotates the (j, k) plane
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], 1).reshape(-1, 3, 3)
        m[:, j, j], m[:, j, k], m[:, k, j], m[:, k, k] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return m

    return rot(2, 0, 1) @ rot(1, 2, 0) @ rot(0, 1, 2)


class Volume3D(Recipe):
    """``3d``: an MNIST digit extruded into a 60x60x60 volume, rotated, scaled and moved in 3-D.

    The STN paper's 3-D experiment (Jaderberg et al. 2015, appendix): "an MNIST digit
    extruded into a 60x60x60 volume, randomly rotated, scaled and translated in 3-D". The
    paper gives no more; the choices here:

    * **Extrusion**: the 28x28 digit, shown ``size`` voxels wide (36: its ink about 26),
      is repeated along the depth over ``thickness`` voxels (8): the canonical volume is
      a slab of ``thickness`` identical slices (:meth:`originals`, ``(n, 1, thickness, 28,
      28)``), each slice as thick as a voxel, so its faces are as sharp as the digit's edges.
    * **Rotation**: about x, y and z (the width, height and depth axes), each angle
      U(-45°, 45°), composed as ``R = R_z R_y R_x``; **scale** U(0.7, 1.2).
    * **Translation**: uniform among the positions that keep the whole slab (its
      trilinear footprint) inside the canvas with a blank outer voxel layer
      (``border = 1``), as ``rts`` places digits; no sample is rejected. A slab that fits
      nowhere (none at the default options; 78 of 1,024 at ``size=60``) is centred and cut
      by the canvas, with a warning (:meth:`Recipe.warn_unfit`).
    * Trilinear sampling through :func:`torchstn.warp` with :class:`~torchstn.Affine3D`.

    Parameters: :class:`~torchstn.Affine3D` ``(N, 12)``, canvas -> slab: ``A = K R^T / s``,
    ``b = -A d``, with ``K = diag(canvas / size, canvas / size, canvas / thickness)``.

    Memory: a sample is 60^3 = 216,000 uint8 voxels, so the train split would be 13 GB;
    :func:`~torchstn.data.get_dataset` renders each batch on the fly instead (the same
    bytes for the same seed), and :func:`~torchstn.data.distorted_mnist` needs ``limit``.
    """

    kind = "3d"
    supersamples = False
    summary = _Summary("digit extruded into a {canvas}x{canvas}x{canvas} volume, rotated ±{angle:g}° about x, y, z, "
                       "scale {scale[0]:g}-{scale[1]:g}, moved in 3-D")
    defaults = {"angle": 45.0, "scale": (0.7, 1.2), "canvas": 60, "size": 36, "thickness": 8,
                "border": 1.0, "mode": "bilinear"}

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        out = super()._check(o)
        if out["mode"] == "bicubic":
            raise ValueError("mode='bicubic' has no 3-D sampler; use 'bilinear' (trilinear) or 'nearest'")
        return out

    @property
    def input_shape(self) -> tuple[int, int, int, int]:  # type: ignore[override]
        return (1, self.canvas, self.canvas, self.canvas)

    @property
    def transform(self) -> Affine3D:
        return Affine3D()

    def originals(self, sources: Sources, source: torch.Tensor) -> torch.Tensor:
        """The extruded digits: ``(n, 1, thickness, 28, 28)`` float32 in [0, 1], every slice the digit."""
        digits = sources.floats(source)
        return digits[:, :, None].expand(-1, -1, self.options["thickness"], -1, -1).contiguous()

    def _draw(self, sources: Sources, index: torch.Tensor, generator: torch.Generator) -> Draw:
        n, c = len(index), self.canvas
        a = math.radians(self.options["angle"])
        angles = uniform(n, -a, a, generator, 3)
        scale = uniform(n, *self.options["scale"], generator)
        u = uniform(n, 0.0, 1.0, generator, 3)
        slab = torch.tensor([c / self.options["size"], c / self.options["size"], c / self.options["thickness"]],
                            dtype=torch.float64)
        forward = scale[:, None, None] * _rotations(angles) / slab  # slab -> canvas: s R K^-1
        linear = _f32(torch.linalg.inv(forward).reshape(n, 9)).reshape(n, 3, 3)
        forward = torch.linalg.inv(linear)  # exactly the inverse of what is stored
        # the slab's footprint: the digit outline on both faces, one slice beyond each
        points, valid = sources.outline(index, 1)
        reach = 1.0 + 1.0 / self.options["thickness"]
        corners = torch.cat([torch.cat([points, torch.full_like(points[..., :1], z)], -1) for z in (-reach, reach)], 1)
        valid = torch.cat([valid, valid], 1)
        mapped = corners @ forward.transpose(1, 2)
        big = torch.finfo(torch.float64).max
        low = torch.where(valid[..., None], mapped, big).amin(1)
        high = torch.where(valid[..., None], mapped, -big).amax(1)
        bound = canvas_bound(c, self.options["border"])
        lo, hi = -bound - low, bound - high
        fitted = (lo <= hi).all(1)
        shift = torch.where(lo <= hi, lo + u * (hi - lo), 0.5 * (lo + hi))
        offset = -(linear @ shift[..., None])
        params = _f32(torch.cat([linear, offset], 2).reshape(n, 12))
        stats = {"placed": n, "unfit": int((~fitted).sum())}
        return Draw(params.float(), index.clone(), sources.labels[index], stats=stats)

    def _warp(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return warp(x, params, self.transform, size=self.input_shape[1:], mode=self.options["mode"])


#: kind -> recipe class
KINDS: dict[str, type[Recipe]] = {
    cls.kind: cls
    for cls in (Rotation, RTS, ProjectiveMNIST, Elastic, Cluttered, Addition, PerturbedICSTN, RotatedPSTN, Volume3D)
}


def get_recipe(kind: str | Recipe, options: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe of ``kind`` (``"r"``, ``"rts"``, ``"p"``, ``"e"``, ``"cluttered"``, ``"addition"``,
    ``"perturbed"``, ``"rotated"``, ``"3d"``; an ``"mnist-"`` prefix is accepted) with ``options``."""
    if isinstance(kind, Recipe):
        if options:
            raise TypeError("options cannot be given with a Recipe instance")
        return kind
    key = check_choice("kind", kind.lower().removeprefix("mnist-") if isinstance(kind, str) else kind, tuple(KINDS))
    return KINDS[key](**dict(options or {}))
