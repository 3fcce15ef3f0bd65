"""Where a warp's forward+backward time goes: the bench's call against the kernels alone.

    python benchmarks/call_parts.py [--case affine-28] [--rounds 15]

Times, interleaved in one process at one thread: the bench case's forward+backward through
``torch.autograd.grad`` (as ``torchstn bench`` times it; also for x's or θ's gradient
alone), its forward under ``no_grad``, torch's ``affine_grid + grid_sample`` forward+backward,
and the fused kernel's forward and backward entry points alone (``benchmarks/ab_kernel.py``'s
bare calls: outputs allocated once, both gradients). The difference between the first and the
sum of the last two is what lies outside the kernels: new output and gradient tensors, autograd
and Python, and the cache misses of a step's tensors.
"""

import argparse
import statistics
import time

import torch

from ab_kernel import bare_call, entry_points, use
from torchstn.bench._cases import build_workload, select_cases
from torchstn.sampling import _fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="affine-28", help="an affine family bench case, as torchstn bench --cases names it")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = build_workload(select_cases([args.case])[0], peers=("torch",))
    ours, torch_peer, grad_out = work.contenders["torchstn"], work.contenders["torch"], work.grad_out
    x, params = work.x.detach(), ours.leaves[1].detach()
    x_leaf, theta_leaf = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
    _fused.fused_status()
    _fused.fast_call()
    libraries = {"this": entry_points(_fused._SOURCE)}
    use(libraries["this"])
    calls = {
        "bench call, forward+backward": lambda: ours.forward_backward(grad_out),
        "bench call, forward": ours.forward,
        "bench call, x's gradient alone": lambda: torch.autograd.grad(ours.run(x_leaf, params), x_leaf, grad_out),
        "bench call, θ's gradient alone": lambda: torch.autograd.grad(ours.run(x, theta_leaf), theta_leaf, grad_out),
        "torch, forward+backward": lambda: torch_peer.forward_backward(grad_out),
        "kernel alone, forward": bare_call(x, params, work.transform, libraries, size=work.case.out_size),
        "kernel alone, backward": bare_call(x, params, work.transform, libraries, backward=True,
                                            size=work.case.out_size),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(20):
                call()
            times[name].append((time.perf_counter() - start) / 20)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in median.items():
        print(f"{name:32s} {ms:8.3f} ms")
    outside = median["bench call, forward+backward"] - median["kernel alone, forward"] - median["kernel alone, backward"]
    print(f"{'outside the kernels':32s} {outside:8.3f} ms")


if __name__ == "__main__":
    main()
