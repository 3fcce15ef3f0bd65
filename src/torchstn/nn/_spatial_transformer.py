"""The spatial transformer module: localisation net + grid generator + sampler."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, overload

import torch
from torch import nn

from torchstn._tracing import exporting, in_functorch
from torchstn._validation import check_input, check_size, sizes_traced
from torchstn.nn._localization import make_regressor
from torchstn.sampling import Backend, Mode, Padding, SamplerOptions
from torchstn.transforms import Transform, get_transform

# typing.Unpack is Python 3.11's (the package supports 3.10, where torch's own dependency has it); imported
# at run time, not for type checking only, so that typing.get_type_hints of the constructors resolves
if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

__all__ = ["SamplerKeywords", "SpatialTransformer"]


class SamplerKeywords(TypedDict, total=False):
    """The fields of :class:`~torchstn.sampling.SamplerOptions` as keywords of a module.

    ``SpatialTransformer(t, loc, padding="border")`` is
    ``SpatialTransformer(t, loc, sampler=SamplerOptions(padding="border"))``; a keyword left
    out or ``None`` keeps its default (``backend=None`` is ``"auto"``).
    """

    mode: Mode
    padding: Padding
    align_corners: bool
    backend: Backend | None


def _sampler_options(owner: str, sampler: SamplerOptions | None, keywords: SamplerKeywords) -> SamplerOptions:
    """``sampler``, or the options the keywords name (the rest at their defaults); not both."""
    unknown = sorted(set(keywords) - SamplerKeywords.__optional_keys__)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    given: dict[str, Any] = {k: v for k, v in keywords.items() if v is not None}  # SamplerOptions validates them
    if sampler is None:
        return replace(SamplerOptions(), **given)
    if not isinstance(sampler, SamplerOptions):
        raise TypeError(f"sampler must be a SamplerOptions, got {type(sampler).__name__}")
    if given:
        raise TypeError(
            f"{owner}() got sampler= and the sampler keyword(s) {', '.join(sorted(given))}: give the options "
            "either as one SamplerOptions or as keywords, not both"
        )
    return sampler


_T = TypeVar("_T")


class _SamplerField(Generic[_T]):
    """A module attribute that is a field of its ``sampler``: ``st.padding`` reads
    ``st.sampler.padding``; setting it replaces ``st.sampler`` by a copy with that field
    changed (validated again; ``None`` sets the default, as for the keywords)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, module: None, owner: type) -> _SamplerField[_T]: ...
    @overload
    def __get__(self, module: SpatialTransformer, owner: type) -> _T: ...
    def __get__(self, module: SpatialTransformer | None, owner: type) -> _T | _SamplerField[_T]:
        return self if module is None else getattr(module.sampler, self.name)

    def __set__(self, module: SpatialTransformer, value: _T | None) -> None:
        change: dict[str, Any] = {self.name: getattr(SamplerOptions(), self.name) if value is None else value}
        module.sampler = replace(module.sampler, **change)


class _Checked:
    """A module attribute checked where it is set, as the constructor checks it (``check(name,
    value)`` returns the value to keep, or raises): a later ``pst.samples = 0`` took effect
    without a word. ``fixed``: set once, by the constructor, for the reason it gives. Kept in
    the instance's ``__dict__`` under its own name, as a plain attribute is (copies and
    pickles of earlier modules hold it there)."""

    def __init__(self, check: Callable[..., Any], fixed: str = "") -> None:
        self.check, self.fixed = check, fixed

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, module: object, owner: type) -> Any:
        if module is None:
            return self
        try:
            return module.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(module).__name__!r} object has no attribute {self.name!r}") from None

    def __set__(self, module: Any, value: object) -> None:
        if self.fixed and self.name in module.__dict__:
            raise AttributeError(f"{self.name} is fixed when a {type(module).__name__} is built ({self.fixed}): "
                                 f"build a new one with {self.name}={value!r}")
        module.__dict__[self.name] = self.checked(module, value)

    def checked(self, module: Any, value: object) -> Any:
        """The value to keep for ``module`` (subclasses check it against the module)."""
        return self.check(self.name, value)


class _Sampler(_Checked):
    """``st.sampler``: a :class:`~torchstn.sampling.SamplerOptions`, checked where it is set (a
    string set there failed only in the next forward pass, with an AttributeError; so did a
    mode the transform's rank cannot sample, ``"bicubic"`` in 3-D)."""

    def __init__(self) -> None:
        super().__init__(_check_sampler)

    if TYPE_CHECKING:  # (types only: the attribute is read in every forward pass, through _Checked's)

        @overload
        def __get__(self, module: None, owner: type) -> _Sampler: ...
        @overload
        def __get__(self, module: SpatialTransformer, owner: type) -> SamplerOptions: ...
        def __get__(self, module: SpatialTransformer | None, owner: type) -> SamplerOptions | _Sampler: ...

    def checked(self, module: Any, value: object) -> SamplerOptions:
        options = self.check(self.name, value)
        options.check_ndim(module.transform.ndim)
        return options


class _OutputSize(_Checked):
    """``st.output_size``: ``None`` or the spatial size of the transform's rank, checked where it
    is set (set later as "4x4", the next forward pass blamed ``size``)."""

    def __init__(self) -> None:
        super().__init__(check_size)

    def checked(self, module: Any, value: object) -> tuple[int, ...] | None:
        return None if value is None else self.check(self.name, value, module.transform.ndim)


def _check_sampler(name: str, value: object) -> SamplerOptions:
    if not isinstance(value, SamplerOptions):
        raise TypeError(f"{name} must be a SamplerOptions, got {type(value).__name__}")
    return value


class SpatialTransformer(nn.Module):
    r"""A spatial transformer (Jaderberg et al., 2015, section 3).

    ``localization`` maps the input to features; the module appends a linear
    regressor that turns them into the ``(B, P)`` parameters θ of ``transform``
    (weights 0, bias the identity, so a new transformer is the identity warp), then
    generates the grid ``T_θ(G)`` of size ``output_size`` and samples the input there.

    Args:
        transform: a :class:`~torchstn.transforms.Transform` or its name.
        localization: any module mapping the input ``(B, C, H, W)`` to features
            ``(B, ...)`` (flattened before the regressor). Where it declares its input
            (:func:`~torchstn.nn.declare_input`), that input must have the rank ``transform``
            warps (``ValueError`` naming ``transform`` otherwise).
        output_size: spatial size of the output; ``None`` keeps the input's.
        in_features: width of the localisation features; by default the width of the
            last ``nn.Linear`` in ``localization``, else inferred from the first batch.
        start: the ``P`` values of θ a new transformer starts at (the regressor's bias;
            its weights start at 0); default the identity. A start that crops (an
            affine ``(s, 0, tx, 0, s, ty)`` with ``s < 1``) makes the transformer look
            for what it must show from its first step.
        sampler: how the input is sampled (:class:`~torchstn.sampling.SamplerOptions`);
            default ``SamplerOptions()``.
        **sampler_keywords: ``mode``, ``padding``, ``align_corners``, ``backend``: the same
            options as keywords (:class:`SamplerKeywords`), instead of ``sampler``.

    Attributes:
        sampler: the :class:`~torchstn.sampling.SamplerOptions`; ``mode``, ``padding``,
            ``align_corners`` and ``backend`` read (and set) its fields.
        last_params: θ of the last forward pass, with its graph (for regularisers
            such as the engine's ``identity_reg``) and for diagnostics; ``None`` before
            the first call; not set by the passes of ``torch.export``. Copies of the
            module (``copy.deepcopy``, pickle) hold it detached, or ``None`` where the
            pass ran inside a ``torch.func`` transform (its θ cannot outlive it): the
            module's own record of such a pass is the transform's tensor, to be read inside
            the transformed function (after ``vmap`` it raises torch's "escaped" error). Its
            graph (the localisation net's activations) lives until the next pass: evaluate
            under ``torch.no_grad()``, or set it to ``None`` to free it. Under
            ``torch.utils.checkpoint(..., use_reentrant=True)`` the pass runs without grad
            and the record has no graph, so a regulariser on it adds nothing: use
            ``use_reentrant=False``, which keeps it.

    The module is a plain ``nn.Module``: ``copy.deepcopy`` (EMA and SWA copies),
    pickle and ``state_dict`` work at any point of training (``AveragedModel`` and
    ``torch.export`` of a lazy regressor, whose width is inferred at the first pass: from
    that pass on, as for any torch lazy module), and the localisation
    net's input is checked against the shape it was built for (see
    :func:`~torchstn.nn.declare_input`).

    Convention:
        θ maps output points to input points in normalised (x, y) coordinates; the same
        ``align_corners`` is used for grid and sampler. Every channel is warped by the
        same grid, so the module works at any depth of a CNN.

    Example:
        >>> loc = stn.conv_localization(1, (28, 28))
        >>> st = stn.SpatialTransformer(stn.Affine(), loc)
        >>> x = torch.rand(4, 1, 28, 28)
        >>> torch.allclose(st(x), x, atol=1e-5)  # a new transformer is the identity
        True
        >>> st.predict_params(x).shape
        torch.Size([4, 6])
        >>> stn.SpatialTransformer("affine", loc, padding="border").sampler
        SamplerOptions(mode='bilinear', padding='border', align_corners=False, backend='auto')
    """

    last_params: torch.Tensor | None
    sampler = _Sampler()
    output_size = _OutputSize()
    mode = _SamplerField[Mode]()
    padding = _SamplerField[Padding]()
    align_corners = _SamplerField[bool]()
    backend = _SamplerField[Backend]()

    def __init__(
        self,
        transform: Transform | str,
        localization: nn.Module,
        output_size: Sequence[int] | None = None,
        *,
        in_features: int | None = None,
        start: Sequence[float] | None = None,
        sampler: SamplerOptions | None = None,
        **sampler_keywords: Unpack[SamplerKeywords],
    ) -> None:
        super().__init__()
        if not isinstance(localization, nn.Module):
            raise TypeError(f"localization must be an nn.Module, got {type(localization).__name__}")
        self.transform = get_transform(transform)
        if _own_features(self):  # (a subclass's own may give its net another view of x, e.g. a projection)
            _check_rank(transform, self.transform, localization)
        self.localization = localization
        self.regressor = make_regressor(localization, self.transform if start is None else start, in_features)
        if self.regressor.out_features != self.transform.num_params:
            raise ValueError(
                f"start must hold the {self.transform.num_params} parameters of {self.transform.name}, "
                f"got {self.regressor.out_features}"
            )
        self.output_size = output_size  # (checked where it is set: _OutputSize)
        self.sampler = _sampler_options(type(self).__name__, sampler, sampler_keywords)
        self.last_params = None

    def predict_params(self, x: torch.Tensor) -> torch.Tensor:
        """θ for each input: ``(B, P)``."""
        return self.regressor(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The localisation net's features ``(B, F)`` of ``x``, its shape checked first.

        Raises:
            TypeError: ``x`` is not a floating-point tensor, or the localisation net returns
                something else than one tensor (a tuple).
            ValueError: ``x`` does not have the rank of the transform's inputs, or not the
                ``(C, *input_size)`` that the localisation net declares
                (:func:`~torchstn.nn.declare_input`), or the features are not ``(B, ...)``
                (``x``'s batch first) or not ``in_features`` wide.
        """
        localization = self.localization
        check_input(x, _declared_input(localization), self.transform.ndim + 2, "the localisation net")
        features = localization(x)
        if not isinstance(features, torch.Tensor):  # (a tuple failed with "'tuple' object has no attribute 'flatten'")
            raise TypeError(f"the localisation net must return one tensor of features, got {type(features).__name__}: "
                            "wrap it in a module that returns the features the regressor reads")
        if features.dim() < 2 or (not sizes_traced() and features.shape[0] != x.shape[0]):  # ((B * F,): IndexError)
            raise ValueError(f"the localisation net must return features of shape (B, ...), B = {x.shape[0]} as in x, "
                             f"got shape {tuple(features.shape)} for x of shape {tuple(x.shape)}")
        features = features.flatten(1)
        width = getattr(self.regressor, "in_features", 0)  # 0: a lazy regressor, inferred now
        if width and not sizes_traced() and features.shape[1] != width:
            raise ValueError(
                f"the localisation net gives {features.shape[1]} features for x of shape {tuple(x.shape)}, the "
                f"regressor expects in_features={width}: build the localisation net for this input size, or give "
                "in_features= its width (guessed from its last nn.Linear where not given)"
            )
        return features

    def transform_input(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp ``x`` by given parameters with this module's output size and sampling options."""
        return self.sampler.warp(x, params, self.transform, self.output_size)

    def forward(self, x: torch.Tensor, return_params: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Warp ``x`` by the θ its localisation net predicts.

        Returns:
            the warped tensor ``(B, C, *output_size)``, or ``(warped, θ)`` with
            ``return_params=True``.
        """
        params = self.predict_params(x)
        if not exporting():
            self.last_params = params
        out = self.transform_input(x, params)
        return (out, params) if return_params else out

    def __prepare_scriptable__(self) -> SpatialTransformer:
        """``torch.jit.script`` asks this of every module it compiles: a transformer's options and
        transforms are Python objects that TorchScript cannot type ("Unknown type annotation:
        'SamplerOptions'", with no hint of what works), so it says which routes do."""
        raise TypeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script; trace it (torch.jit.trace, or "
            "torchstn.export.export_torchscript) or export it (torch.export, torchstn.export.export_onnx)"
        )

    def __getstate__(self) -> dict[str, object]:
        """What ``copy.deepcopy`` and pickle copy: the module, with the ``last_*`` records of
        the last forward pass detached from its graph (a tensor with a graph cannot be copied)."""
        state = self.__dict__.copy()
        for key, value in state.items():
            if key.startswith("last_"):
                state[key] = _detached(value)
        return state

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, output_size={self.output_size}, mode={self.mode!r}, "
            f"padding={self.padding!r}, align_corners={self.align_corners}"
            + (f", backend={self.backend!r}" if self.backend != "auto" else "")  # (two backends printed alike)
        )


def _declared_input(net: nn.Module) -> tuple[int, ...] | None:
    """``net.input_shape`` (:func:`~torchstn.nn.declare_input`), or ``None`` where it has none:
    read from the instance or its class, without ``nn.Module.__getattr__``'s missing-attribute
    error, which cost 2.3 µs of every call of a net that declares nothing."""
    declared = vars(net).get("input_shape")
    if declared is None and hasattr(type(net), "input_shape"):
        declared = net.input_shape  # a class attribute or property
    return declared


def _own_features(module: SpatialTransformer) -> bool:
    """Whether the localisation net of ``module`` sees ``x`` as torchstn gives it (no subclass of a
    user's computes its features or θ)."""
    cls = type(module)
    return all(getattr(cls, name).__module__.startswith("torchstn.") for name in ("features", "predict_params"))


def _check_rank(given: Transform | str, transform: Transform, localization: nn.Module) -> None:
    """Refuse, where the module is built, a ``transform`` that warps inputs of another rank than the
    localisation net declares (:func:`~torchstn.nn.declare_input`): such a module took only inputs that
    one of the two refuses, and its first forward pass blamed ``x``. A net that declares nothing is
    not guessed at."""
    declared = _declared_input(localization)
    if declared is None or len(declared) - 1 == transform.ndim:
        return
    name = repr(given) if isinstance(given, str) else transform.name
    raise ValueError(
        f"transform {name} warps {transform.ndim}-D inputs; the localisation net is built for "
        f"{len(declared) - 1}-D inputs {tuple(declared)}: give a {len(declared) - 1}-D transform"
    )


def _detached(value: object) -> object:
    """A record as a copy holds it: detached; ``None`` for one made inside a ``torch.func``
    transform (``vmap``, ``grad``, ...), which cannot be used, nor copied, once it has ended."""
    if isinstance(value, torch.Tensor):
        return None if in_functorch(value) else value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value
