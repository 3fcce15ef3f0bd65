"""The fused kernels' other builds (2-D and 3-D): what a CPU without AVX2 (older x86, ARM), or with AVX2 but
not AVX-512, compiles and runs.

The rest of the suite runs the build this machine's capability selects (AVX-512 or AVX2);
a process with ``ATEN_CPU_CAPABILITY=default`` builds and runs the portable one, whose loops
go one point at a time over blocks padded to whole vectors (rows of narrow outputs packed
into blocks, wider rows block by block). It once wrote past the end of
the output (heap corruption, then an abort) on every row whose width is not a multiple
of 8, which no AVX2 run could see. On an AVX-512 machine a process with
``ATEN_CPU_CAPABILITY=avx2`` runs the AVX2 build, whose row windows are read with
one-source permutes and blends instead of AVX-512's two-source permutes. Every build computes
a float32 forward with the same operations in the same order, so the other builds' outputs
must be this process's bits (their gradients wrt θ sum lanes of other widths: not compared).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._helpers import float32_forwards
from torchstn.sampling import fused_status


_CHECK = r"""
import itertools, torch, torch.nn.functional as F, torchstn as stn
from torchstn.sampling import fused_status
import sys
assert torch.backends.cpu.get_cpu_capability() == sys.argv[1], torch.backends.cpu.get_cpu_capability()
assert fused_status().available, fused_status()
torch.manual_seed(0)
worst = 0.0

def check(x, transform, out, padding, mode, tol, case):
    # the fused warp's output and gradients (x, theta) against F.grid_sample's
    global worst
    b, n = x.shape[0], x.dim() - 2
    theta = (transform.identity(b, dtype=x.dtype) + 0.3 * torch.randn(b, n * (n + 1), dtype=x.dtype)).requires_grad_()
    y = stn.warp(x, theta, transform, size=out, mode=mode, padding=padding, backend="fused")
    ref = F.grid_sample(x, F.affine_grid(theta.view(b, n, n + 1), (b, x.shape[1], *out), align_corners=False),
                        mode=mode, padding_mode=padding, align_corners=False)
    weights = torch.rand_like(y)
    got = torch.autograd.grad((y * weights).sum(), (x, theta))
    want = torch.autograd.grad((ref * weights).sum(), (x, theta))
    for a, r in ((y, ref), *zip(got, want)):
        err = ((a - r).abs().max() / r.abs().max().clamp_min(1)).item()
        assert err < tol, (case, out, padding, mode, err)
        worst = max(worst, err)

for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
    for padding, mode in itertools.product(("zeros", "border", "reflection"), ("bilinear", "nearest")):
        for (b, c, h, w, out) in ((3, 1, 28, 28, (28, 28)), (2, 3, 13, 9, (7, 11)), (1, 2, 5, 17, (5, 17)), (2, 1, 6, 70, (3, 70))):
            for channels_last in (False, True):
                x = torch.rand(b, c, h, w, dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                check(x.requires_grad_(), stn.Affine(), out, padding, mode, tol, (dtype, b, c, h, w, channels_last))
        # volumes: vectors at the faces, rows of 1-2
        for (b, c, d, h, w, out) in ((2, 1, 9, 8, 17, (9, 8, 17)), (1, 3, 5, 6, 2, (4, 5, 19)), (2, 2, 4, 3, 1, (3, 4, 9))):
            x = torch.rand(b, c, d, h, w, dtype=dtype, requires_grad=True)
            check(x, stn.Affine3D(), out, padding, mode, tol, (dtype, b, c, d, h, w))
print(sys.argv[1], "build matches F.grid_sample; worst relative error", worst)
sys.path.insert(0, sys.argv[3])
from tests._helpers import float32_forwards
torch.save(float32_forwards(), sys.argv[2])
"""


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2"])
def test_the_other_builds_match_grid_sample_and_stay_in_bounds(capability, tmp_path):
    if not fused_status().available:
        pytest.skip(f"the fused kernel cannot be built here: {fused_status().error}")
    if capability == "AVX2" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip(f"the suite itself runs the AVX2 build here (torch's capability: {torch.backends.cpu.get_cpu_capability()})")
    forwards = tmp_path / "forwards.pt"
    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", _CHECK, capability, str(forwards), str(root)], capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": capability.lower(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{capability} build matches F.grid_sample" in done.stdout
    theirs, ours = torch.load(forwards), float32_forwards()
    assert len(theirs) == len(ours)
    for i, (a, b) in enumerate(zip(theirs, ours)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=f"forward {i}")
