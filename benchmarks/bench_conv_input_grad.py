"""The input gradient of a convolution with few input channels: oneDNN against ATen's direct path.

    python benchmarks/bench_conv_input_grad.py [--rounds 9] [--no-steps]

Part 1, the gradient alone: for each case, ATen's ``convolution_backward`` (oneDNN on the
CPU) against its direct path (``_slow_conv2d_backward``: im2col and a matrix product), input
gradient only, NCHW and channels_last, and 1-D convolutions (time series; ``stn.nn.conv1d``
runs them as 2-D ones of height 1). ``torchstn.nn.DIRECT_INPUT_GRAD_MAX_CHANNELS`` is set
from it. Part 2, what it does to a training step (forward, cross-entropy, backward, SGD
update) of ``create_model("st-cnn-aff")``, ``create_model("cnn")`` and the CNN with the
gradient wrt its input, each with its convolutions as built (``torchstn.nn.Conv2d``) and as
plain ``torch.nn.Conv2d`` (the same weights). One thread, interleaved rounds
(``torchstn.bench.interleaved``); prints median times and the median of the per-round
ratios (> 1: the direct path / torchstn's Conv2d is faster).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.bench import interleaved

#: (batch, in channels, size, filters, kernel)
CASES = [(64, 1, 28, 32, 9), (256, 1, 28, 32, 9), (64, 1, 21, 32, 9), (64, 2, 28, 32, 9), (64, 3, 32, 32, 3),
         (64, 3, 32, 64, 5), (64, 4, 28, 32, 9), (64, 8, 28, 32, 9), (64, 16, 32, 32, 3), (64, 32, 28, 32, 7)]
#: 1-D (time series), run by stn.nn.conv1d as 2-D convolutions of height 1: (batch, in channels, length,
#: filters, kernel)
CASES_1D = [(16, 1, 150, 32, 7), (64, 1, 500, 64, 7), (64, 1, 500, 128, 8), (64, 3, 500, 64, 5), (64, 8, 500, 64, 5)]


def gradient_alone(rounds: int) -> None:
    direct = torch.ops.aten._slow_conv2d_backward.output_mask
    for b, c, size, filters, k in CASES:
        for channels_last in (False, True):
            x, w = torch.rand(b, c, size, size), torch.randn(filters, c, k, k)
            g = torch.randn(b, filters, size, size)
            if channels_last:
                x, w, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, g))
            pad = [k // 2, k // 2]
            timings = interleaved({
                "onednn": lambda: torch.ops.aten.convolution_backward(
                    g, x, w, [filters], [1, 1], pad, [1, 1], False, [0, 0], 1, [True, False, False]),
                "direct": lambda: direct(g, x, w, [k, k], [1, 1], pad, [True, False, False]),
            }, rounds=rounds)
            layout = "channels_last" if channels_last else "NCHW"
            print(f"{b:3d}x{c:2d}x{size}x{size} -> {filters:2d}, {k}x{k}, {layout:13s} oneDNN "
                  f"{timings.median('onednn') * 1e3:7.2f} ms   direct {timings.median('direct') * 1e3:7.2f} ms   "
                  f"ratio {timings.ratio('direct', 'onednn'):.2f}x", flush=True)


def gradient_alone_1d(rounds: int) -> None:
    direct = torch.ops.aten._slow_conv2d_backward.output_mask
    for b, c, length, filters, k in CASES_1D:
        x, w = torch.rand(b, c, length), torch.randn(filters, c, k)
        g = torch.randn(b, filters, length - k + 1)
        x2, w2, g2 = x[:, :, None], w[:, :, None], g[:, :, None]
        timings = interleaved({
            "onednn": lambda: torch.ops.aten.convolution_backward(
                g, x, w, [filters], [1], [0], [1], False, [0], 1, [True, False, False]),
            "direct": lambda: direct(g2, x2, w2, [1, k], [1, 1], [0, 0], [True, False, False]),
        }, rounds=rounds)
        print(f"{b:3d}x{c:2d}x{length} -> {filters:3d}, {k}, 1-D          oneDNN {timings.median('onednn') * 1e3:7.2f} ms   "
              f"direct {timings.median('direct') * 1e3:7.2f} ms   ratio {timings.ratio('direct', 'onednn'):.2f}x", flush=True)


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose torchstn Conv2d layers are plain torch.nn.Conv2d (same weights)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) is stn.nn.Conv2d:
            module.__class__ = torch.nn.Conv2d
        elif type(module) is stn.nn.Conv1d:
            module.__class__ = torch.nn.Conv1d
    return plain


def training_steps(rounds: int, batch: int) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step(model: torch.nn.Module, input_grad: bool = False) -> None:
        model.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_() if input_grad else x
        F.cross_entropy(model(inp), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad

    for name, input_grad in (("st-cnn-aff", False), ("cnn", False), ("cnn", True)):
        model = stn.create_model(name)
        plain = _plain(model)
        timings = interleaved({"torchstn": lambda: step(model, input_grad), "plain": lambda: step(plain, input_grad)},
                              rounds=rounds)
        label = f"{name}{' with dL/dx' if input_grad else ''}"
        print(f"training step {batch}x1x28x28, {label:18s} torchstn.nn.Conv2d {timings.median('torchstn') * 1e3:7.1f} ms   "
              f"torch.nn.Conv2d {timings.median('plain') * 1e3:7.1f} ms   ratio {timings.ratio('torchstn', 'plain'):.2f}x",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=256, help="batch of the training steps")
    parser.add_argument("--no-steps", action="store_true", help="the gradient alone, no training steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} interleaved rounds; ratio = other / faster-candidate")
    gradient_alone(args.rounds)
    gradient_alone_1d(args.rounds)
    if not args.no_steps:
        training_steps(args.rounds, args.batch)


if __name__ == "__main__":
    main()
