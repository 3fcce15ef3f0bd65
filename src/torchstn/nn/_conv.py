"""1-D and 2-D convolutions whose input gradient on the CPU is fast for few input channels.

A convolution right after a spatial transformer needs the gradient wrt its input (the
transformer's θ learns through it), and that input has few channels (an image). On the
CPU, ATen computes that gradient with oneDNN, whose time does not fall below that of about
16 input channels however few there are: for the ST-CNN's first convolution (1 -> 32, 9x9,
28x28) it is the largest single cost of a training step. ATen's direct path (im2col and a
matrix product, what ``F.conv2d`` uses where oneDNN is off) scales with the channels and is
several times faster there. :func:`conv2d` takes it for the input gradient where it is
measured faster and keeps oneDNN for the rest (the forward and the weight gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple, _pair, _single

from torchstn._tracing import autocast_enabled, differentiable_vjp, eager_tensors

__all__ = ["DIRECT_INPUT_GRAD_MAX_CHANNELS", "Conv1d", "Conv2d", "conv1d", "conv2d"]

#: input channels up to which :func:`conv2d` computes the input gradient on ATen's direct
#: path on the CPU. Against oneDNN (``python benchmarks/bench_conv_input_grad.py``, one
#: thread, float32, NCHW and channels_last, docs/benchmarks.md): 1 channel 4.2-7.2x faster,
#: 2-4 channels 1.0-3.8x, 8 channels 0.85-1.06x, 16 and 32 channels 0.54-0.79x (9x9 at
#: 21x21 and 28x28, 3x3 and 5x5 at 32x32, 32 or 64 filters); 1-D, 1-3 channels 3.0-7.1x, 8 channels
#: 1.77x (lengths 150 and 500, 32-128 filters, two trainings running)
DIRECT_INPUT_GRAD_MAX_CHANNELS = 4

_DIRECT_BACKWARD = getattr(getattr(torch.ops.aten, "_slow_conv2d_backward", None), "output_mask", None)


class _DirectInputGrad(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding)``; its input gradient on ATen's direct path."""

    @staticmethod
    def forward(x, weight, bias, stride, padding):  # noqa: ANN001, ANN205, D102
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001, D102
        x, weight, bias, ctx.stride, ctx.padding = inputs
        ctx.save_for_backward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205, D102
        x, weight, bias = ctx.saved_tensors
        needed = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():  # create_graph: the gradient's own graph, through F.conv2d
            grads = differentiable_vjp(
                lambda x, w, b: F.conv2d(x, w, b, ctx.stride, ctx.padding), (x, weight, bias), grad_out, needed
            )
            return *grads, None, None
        grad_x = grad_w = grad_b = None
        if needed[0]:
            # (one channel: x's and the weight's strides as NCHW, see _nchw)
            xd, wd = _nchw(x, weight) if x.shape[1] == 1 else (x, weight)
            grad_x = _DIRECT_BACKWARD(grad_out, xd, wd, weight.shape[2:], ctx.stride, ctx.padding,
                                      [True, False, False])[0]
        if needed[1] or needed[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None if bias is None else [bias.shape[0]], ctx.stride, ctx.padding, [1, 1],
                False, [0, 0], 1, [False, needed[1], needed[2]],
            )
        return grad_x, grad_w, grad_b, None, None


def _nchw(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with NCHW strides (copied where they have others).

    For a one-channel input, whose layout carries no order of channels: ATen's direct path
    computes in channels_last wherever the input or the weight suggests it, and a one-channel
    weight that ``Module.to(memory_format=torch.channels_last)`` restrided does
    (``is_contiguous()`` holds for both layouts there). That path is slower for large kernels:
    the ST-CNN's first convolution's input gradient (256x1x28x28 -> 32, 9x9, the output
    gradient in channels_last) took 47.6 ms, 19.2 ms with the input and weight in NCHW (10.6 ms
    for an NCHW output gradient); for 64x2x28x28 -> 32, 9x9 14.0 against 7.1 ms, but 2.7
    against 3.5 ms for 64x3x32x32 -> 32, 3x3, which is why inputs of more channels keep their
    layout (one thread, interleaved, 2026-12-06, Intel Xeon).
    """
    return tuple(t if t.stride() == _contiguous_strides(t.shape) else t.clone(memory_format=torch.contiguous_format)
                 for t in tensors)


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _direct_input_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: object,
                       dilation: object, groups: int, dims: int = 2) -> bool:
    """Whether :func:`conv2d` (``dims=2``) or :func:`conv1d` (``dims=1``) takes the direct input
    gradient: an input gradient to compute (eager mode, plain tensors), ATen's direct path
    present, a float32/float64 CPU input of 1 to :data:`DIRECT_INPUT_GRAD_MAX_CHANNELS`
    channels, no groups, no dilation, numeric padding, no autocast."""
    return (
        isinstance(x, torch.Tensor)  # (first: torch.fx's Proxy cannot answer requires_grad in an `and`)
        and x.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and _DIRECT_BACKWARD is not None
        and eager_tensors(x, weight, *(() if bias is None else (bias,)))  # (before sizes a tracer would record)
        and x.dim() == dims + 2
        and 0 < x.shape[1] <= DIRECT_INPUT_GRAD_MAX_CHANNELS
        and groups == 1
        and all(d == 1 for d in _ntuple(dims)(dilation))
        and not isinstance(padding, str)
        and not autocast_enabled("cpu")
    )


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """:func:`torch.nn.functional.conv2d`, with a fast input gradient for few input channels on the CPU.

    The same values and gradients (to float rounding: the input gradient sums the same
    products in another order). Where ``x`` needs a gradient and has 1 to
    :data:`DIRECT_INPUT_GRAD_MAX_CHANNELS` channels on the CPU (float32 or float64, no
    groups or dilation, numeric padding, outside autocast, in eager mode), its gradient
    is computed by ATen's direct path instead of oneDNN's (the module's docstring says
    why); everywhere else this is ``F.conv2d``. Higher-order gradients go through
    ``F.conv2d``.

    Args:
        x: input ``(B, C, H, W)``.
        weight, bias, stride, padding, dilation, groups: as in ``F.conv2d``.

    Returns:
        ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    Example:
        >>> x = torch.rand(2, 1, 28, 28, requires_grad=True)
        >>> w = torch.randn(32, 1, 9, 9)
        >>> out = stn.nn.conv2d(x, w, padding=4)
        >>> torch.allclose(out, torch.nn.functional.conv2d(x, w, padding=4), atol=1e-5)
        True
    """
    if _direct_input_grad(x, weight, bias, padding, dilation, groups):
        return _DirectInputGrad.apply(x, weight, bias, _pair(stride), _pair(padding))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class _DirectConv:
    """``forward`` of :class:`Conv1d` and :class:`Conv2d`: torch's, with the class's ``_conv``
    (:func:`conv1d` or :func:`conv2d`) in place of ``F.conv1d`` / ``F.conv2d`` in eager mode.
    ``torch.jit.script`` compiles torch's own ``_conv_forward`` instead (it cannot compile an
    autograd Function: scripting a classifier built of these failed)."""

    _conv: Callable[..., torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._direct_conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _direct_conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # padded here, as torch.nn.Conv1d/Conv2d do
            x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), 0
        return self._conv(x, weight, bias, self.stride, padding, self.dilation, self.groups)


class Conv2d(_DirectConv, nn.Conv2d):
    """A :class:`torch.nn.Conv2d` that computes with :func:`conv2d`: for the convolution after a transformer.

    A drop-in replacement (the same parameters, state dict and options), whose input
    gradient on the CPU is several times faster for inputs of 1 to
    :data:`DIRECT_INPUT_GRAD_MAX_CHANNELS` channels: the first convolution of a
    classifier behind a :class:`SpatialTransformer`, through which θ learns.
    ``torch.jit.script`` compiles torch's convolution in its place. ``torch.ao``'s
    quantization and fusion match module classes exactly: quantization passes it by, and
    ``fuse_modules`` refuses it (no fuser for it and a batch norm): swap it for a
    ``torch.nn.Conv2d`` first (its state dict loads as is).

    Example:
        >>> conv = stn.nn.Conv2d(1, 32, 9, padding=4)
        >>> conv(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 32, 28, 28])
    """

    _conv = staticmethod(conv2d)


def conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """:func:`torch.nn.functional.conv1d`, with the input gradient of :func:`conv2d`.

    Where the direct input gradient applies (as for :func:`conv2d`), the convolution runs
    as a 2-D one of height 1; everywhere else this is ``F.conv1d``.

    Args:
        x: input ``(B, C, L)``.
        weight, bias, stride, padding, dilation, groups: as in ``F.conv1d``.

    Returns:
        ``F.conv1d(x, weight, bias, stride, padding, dilation, groups)``.

    Example:
        >>> x = torch.rand(2, 1, 150, requires_grad=True)
        >>> w = torch.randn(32, 1, 7)
        >>> torch.allclose(stn.nn.conv1d(x, w), torch.nn.functional.conv1d(x, w), atol=1e-5)
        True
    """
    if _direct_input_grad(x, weight, bias, padding, dilation, groups, dims=1):
        (s,), (p,) = _single(stride), _single(padding)
        return _DirectInputGrad.apply(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, s), (0, p)).squeeze(2)
    return F.conv1d(x, weight, bias, stride, padding, dilation, groups)


class Conv1d(_DirectConv, nn.Conv1d):
    """A :class:`torch.nn.Conv1d` that computes with :func:`conv1d`: for the convolution after a transformer.

    The 1-D counterpart of :class:`Conv2d` (time series behind a 1-D transformer).

    Example:
        >>> conv = stn.nn.Conv1d(1, 32, 7)
        >>> conv(torch.rand(2, 1, 150)).shape
        torch.Size([2, 32, 144])
    """

    _conv = staticmethod(conv1d)
