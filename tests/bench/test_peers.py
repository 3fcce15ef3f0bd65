"""The benchmark's peers do the same work as torchstn: same image for the same transform.

Otherwise the ratios compare different computations. kornia's conventions (pixel
matrices mapping input to output, its own align_corners default, a TPS solved from point
pairs with an ``r² log r`` kernel) are the easy ones to get wrong; OpenCV's (pixel
matrices mapping output to input with ``WARP_INVERSE_MAP``, ``(H, W, C)`` images) and JAX's
(a warp written out in jax.numpy, gradients by ``jax.vjp``) are checked against float64
``F.affine_grid + F.grid_sample`` here, and against torch's warp by the benchmark itself
before it times them. The OpenCV and JAX tests are skipped where those are not installed.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn import ThinPlateSpline
from torchstn.bench import Case, _jax, _opencv, _peers, build_workload, check_targets, format_report, run_benchmark
from torchstn.transforms import get_transform


SHAPES = [((3, 2, 12, 10), None), ((2, 1, 13, 9), (7, 11))]


def _outputs(
    case: Case, align_corners: bool, seed: int = 3, params: torch.Tensor | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each contender's float64 output and gradient wrt the input on ``case``."""
    work = build_workload(case, dtype=torch.float64, align_corners=align_corners, seed=seed, params=params)
    out = {}
    for name, contender in work.contenders.items():
        y = contender.run(*contender.leaves)
        (grad_x,) = torch.autograd.grad(y, contender.leaves[:1], work.grad_out)
        out[name] = (y.detach(), grad_x)
    return out


def _check(out: dict[str, tuple[torch.Tensor, torch.Tensor]], peer: str) -> None:
    y, gx = out["torchstn"]
    y_peer, gx_peer = out[peer]
    assert y.abs().sum() > 0, "the warp must not be empty, or the comparison proves nothing"
    torch.testing.assert_close(y_peer, y, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(gx_peer, gx, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("family", ["translation", "attention", "similarity", "affine"])
@pytest.mark.parametrize(("shape", "size"), SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_torch_peer_matches(family: str, shape, size, align_corners: bool) -> None:
    _check(_outputs(Case("t", family, shape, size), align_corners), "torch")


@pytest.mark.parametrize("align_corners", [False, True])
def test_torch_peer_matches_3d(align_corners: bool) -> None:
    _check(_outputs(Case("t", "affine3d", (2, 2, 6, 7, 5), (5, 6, 4)), align_corners), "torch")


@pytest.mark.parametrize("family", ["affine", "similarity", "projective"])
@pytest.mark.parametrize(("shape", "size"), SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_kornia_matrix_warps_match(family: str, shape, size, align_corners: bool) -> None:
    pytest.importorskip("kornia")
    _check(_outputs(Case("t", family, shape, size), align_corners), "kornia")


@pytest.mark.parametrize("align_corners", [False, True])
def test_kornia_tps_matches_for_an_affine_map(align_corners: bool) -> None:
    # kornia's spline has its kernel centres at the targets, ours at the output-frame
    # control points: for an affine θ both are that affine map, so the images agree.
    pytest.importorskip("kornia")
    tps = ThinPlateSpline()
    a = torch.tensor([[[0.9, 0.15, 0.05], [-0.1, 1.1, -0.02]], [[1.05, 0.0, -0.1], [0.05, 0.95, 0.1]]],
                     dtype=torch.float64)
    targets = tps.control_points @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]
    case = Case("t", "tps", (2, 2, 12, 10))
    _check(_outputs(case, align_corners, seed=0, params=targets.reshape(2, -1)), "kornia")


def test_kornia_tps_sends_the_control_points_to_the_targets() -> None:
    # for a general θ both splines interpolate the same correspondences
    pytest.importorskip("kornia")
    tps = ThinPlateSpline()
    work = build_workload(Case("t", "tps", (3, 1, 8, 8)), dtype=torch.float64)
    targets = work.params.reshape(3, -1, 2)
    controls = _peers.tps_controls(tps, 3, device=targets.device, dtype=targets.dtype)
    torch.testing.assert_close(_peers.kornia_tps_points(controls, controls, targets), targets)
    torch.testing.assert_close(tps.transform_points(work.params, controls), targets)


def test_missing_peers_are_noted() -> None:
    work = build_workload(Case("t", "projective", (1, 1, 8, 8)), peers=("torch",))
    assert set(work.contenders) == {"torchstn"}
    assert any("affine_grid cannot represent" in n for n in work.notes)


# ---------------------------------------------------------------------------------------------
# the peers outside torch: OpenCV (forward only) and JAX (forward and gradients)

NEEDS_OPENCV_5 = "OpenCV >= 5 (optional peer: pip install opencv-python-headless); before 5 it rounds points to 1/32 px"
NEEDS_JAX = "JAX (optional peer: pip install 'jax[cpu]')"


def _far_params(family: str, batch: int, seed: int) -> torch.Tensor:
    """Random θ far enough from the identity that some points leave the image (zeros padding is exercised)."""
    transform = get_transform(family)
    noise = 0.05 if family == "projective" else 0.25
    g = torch.Generator().manual_seed(seed)
    return transform.identity(batch, dtype=torch.float64) + noise * torch.randn(
        batch, transform.num_params, generator=g, dtype=torch.float64
    )


def _reference(work, params64: torch.Tensor, align_corners: bool):
    """Float64 torch warp of the workload's image by ``params64``, with gradients wrt the image and the matrix
    the peer takes (``F.affine_grid`` rows, or the homography through ``stn.warp``), for ``grad_out``."""
    transform, size = work.transform, work.case.out_size
    n = transform.ndim
    x = work.x.detach().double().requires_grad_()
    if transform.projective:
        m = transform.matrix(params64).requires_grad_()
        out = stn.warp(x, m, "projective", size, align_corners=align_corners, backend="torch")
    else:
        m = transform.matrix(params64)[:, :n].contiguous().requires_grad_()
        grid = F.affine_grid(m, [x.shape[0], x.shape[1], *size], align_corners=align_corners)
        out = F.grid_sample(x, grid, align_corners=align_corners)
    return (out.detach(), *torch.autograd.grad(out, (x, m), work.grad_out.double()))


# 1, 3 and 4 channels: OpenCV 5.0 still rounds points to 1/32 px with 2 (the benchmark's check says so)
FOREIGN_2D = [("affine", (3, 3, 12, 10), None), ("affine", (2, 3, 13, 9), (7, 11)), ("similarity", (2, 1, 9, 16), None),
              ("translation", (2, 4, 8, 11), (10, 6)), ("projective", (2, 3, 10, 12), None)]


@pytest.mark.parametrize(("family", "shape", "size"), FOREIGN_2D)
@pytest.mark.parametrize("align_corners", [False, True])
def test_opencv_equals_grid_sample(family, shape, size, align_corners) -> None:
    pytest.importorskip("cv2", minversion="5.0", reason=NEEDS_OPENCV_5)
    params = _far_params(family, shape[0], seed=11)
    work = build_workload(Case("t", family, shape, size), peers=("opencv",), align_corners=align_corners, params=params)
    assert "opencv" in work.contenders, work.notes
    expected = _reference(work, params, align_corners)[0]
    assert (expected == 0).any() and expected.abs().sum() > 0  # points outside the image, and inside
    torch.testing.assert_close(work.contenders["opencv"].output().double(), expected, atol=1e-4, rtol=0)


JAX_CASES = [*((*c, False) for c in FOREIGN_2D), ("affine", (2, 2, 7, 9), None, True),
             ("affine3d", (2, 2, 6, 7, 5), (5, 6, 4), False), ("affine3d", (1, 3, 5, 4, 6), None, True)]


@pytest.mark.parametrize(("family", "shape", "size", "align_corners"), JAX_CASES)
def test_jax_equals_torch_with_gradients(family, shape, size, align_corners) -> None:  # each compiles: few cases
    pytest.importorskip("jax", reason=NEEDS_JAX)
    params = _far_params(family, shape[0], seed=12)
    work = build_workload(Case("t", family, shape, size), peers=("jax",), align_corners=align_corners, params=params)
    assert "jax" in work.contenders, work.notes
    jax_peer = work.contenders["jax"]
    out, grad_x, grad_m = _reference(work, params, align_corners)
    torch.testing.assert_close(jax_peer.output().double(), out, atol=1e-4, rtol=0)
    found_x, found_m = jax_peer.gradients()
    assert grad_m.abs().max() > 1  # a real θ-gradient
    torch.testing.assert_close(found_x.double(), grad_x, atol=1e-4, rtol=0)
    torch.testing.assert_close(found_m.double(), grad_m, atol=1e-3 * grad_m.abs().max().item(), rtol=0)


def test_pixel_matrix_of_a_shift_and_a_zoom() -> None:
    """Closed forms (align_corners=False, same size): a normalised shift t moves pixels by t·W/2; a zoom s
    about the centre keeps the centre pixel ((W - 1) / 2) fixed."""
    h, w, t, s = 6, 10, 0.3, 0.5
    shift = torch.tensor([[[1.0, 0.0, t], [0.0, 1.0, -t], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    expected = torch.tensor([[[1.0, 0.0, t * w / 2], [0.0, 1.0, -t * h / 2], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(_peers.pixel_matrix_src_from_dst(shift, (h, w), (h, w)), expected)
    zoom = torch.diag(torch.tensor([s, s, 1.0], dtype=torch.float64))[None]
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(_peers.pixel_matrix_src_from_dst(zoom, (h, w), (h, w))[0] @ centre, centre)
    inverse = _peers.pixel_matrix_dst_from_src(zoom, (h, w), (h, w))[0]
    torch.testing.assert_close(inverse @ _peers.pixel_matrix_src_from_dst(zoom, (h, w), (h, w))[0],
                               torch.eye(3, dtype=torch.float64))


def test_an_opencv_that_differs_is_noted_and_not_timed(monkeypatch) -> None:
    pytest.importorskip("cv2", reason=NEEDS_OPENCV_5)
    real = _opencv.opencv_warp

    def off_by_1e3(*args, **kwargs):  # what OpenCV 4's 1/32-pixel rounding does, roughly
        run, to_torch = real(*args, **kwargs)
        return run, lambda outputs: to_torch(outputs) + 1e-3

    monkeypatch.setattr(_opencv, "opencv_warp", off_by_1e3)
    work = build_workload(Case("t", "affine", (2, 1, 8, 8)), peers=("torch", "opencv"))
    assert set(work.contenders) == {"torchstn", "torch"}
    assert any(n.startswith("opencv: differs from torch's warp") and "output 0.001 > 0.0001" in n for n in work.notes)


def test_a_jax_gradient_that_differs_is_noted_and_not_timed(monkeypatch) -> None:
    pytest.importorskip("jax", reason=NEEDS_JAX)
    real = _jax.jax_warp_and_vjp

    def wrong_theta_gradient(*args, **kwargs):
        forward, backward = real(*args, **kwargs)
        return forward, lambda x, m, g: (lambda gx, gm: (gx, gm * 1.1))(*backward(x, m, g))

    monkeypatch.setattr(_jax, "jax_warp_and_vjp", wrong_theta_gradient)
    work = build_workload(Case("t", "affine", (2, 1, 8, 8)), peers=("jax",))
    assert "jax" not in work.contenders
    assert any(n.startswith("jax: differs") and "d/dmatrix" in n and "d/dx" not in n for n in work.notes)


def test_absent_peers_are_one_note_not_an_error(monkeypatch) -> None:
    monkeypatch.setattr(_opencv, "opencv_version", lambda: None)
    monkeypatch.setattr(_jax, "jax_version", lambda: None)
    report = run_benchmark(["affine-b1-28", "affine3d-32"], quick=True, components=False)
    for case in report.cases:
        assert not {"opencv", "jax"} & set(case.passes["forward"])
    text = format_report(report)
    assert text.count("opencv: not installed") == 1 and text.count("jax: not installed") == 1
    assert ("affine-b1-28, affine3d-32: opencv: not installed (pip install 'torchstn[bench]', or "
            "'opencv-python-headless>=5' alone)") in text  # (the extra, as kornia's note names it)
    assert "checked against torch's warp" not in text  # no peer outside torch ran


def test_a_broken_install_is_a_note_not_an_error(monkeypatch) -> None:
    """Installed (its metadata is there) but failing at import, as a jaxlib built for another numpy does."""
    def broken():
        raise ImportError("numpy.core.multiarray failed to import")

    monkeypatch.setattr(_jax, "jax_version", lambda: "0.4.0")
    monkeypatch.setattr(_jax, "import_jax", broken)
    work = build_workload(Case("t", "affine", (2, 1, 8, 8)), peers=("jax",))
    assert set(work.contenders) == {"torchstn"}
    assert "jax: installed but failed here (ImportError: numpy.core.multiarray failed to import); skipped" in work.notes


def test_quick_run_times_opencv_forward_and_jax_both_passes() -> None:
    pytest.importorskip("cv2", minversion="5.0", reason=NEEDS_OPENCV_5)
    pytest.importorskip("jax", reason=NEEDS_JAX)
    report = run_benchmark(["affine-b1-28", "affine3d-32"], quick=True, components=False,
                           peers=("torch", "opencv", "jax"))
    small, volume = report.case("affine-b1-28"), report.case("affine3d-32")
    assert {"opencv", "jax"} <= set(small.passes["forward"])
    assert "jax" in small.passes["forward+backward"] and "opencv" not in small.passes["forward+backward"]
    assert small.passes["forward"]["opencv"].ratio > 0 and small.peer_errors["opencv"]["output"] <= 1e-4
    assert set(volume.passes["forward"]) == {"torchstn", "torch", "jax"} and "opencv: no 3-D warp" in volume.notes
    assert set(volume.peer_errors["jax"]) == {"output", "d/dx", "d/dmatrix"}
    text = format_report(report)
    assert "opencv (time, ratio)" in text and "jax (time, ratio)" in text and "checked against torch's warp" in text
    report.meta["quick"] = False  # (a quick run judges no target: judged as a full one, the peers' targets are wired)
    targets = {t.target: t for t in check_targets(report)}
    # (two cases of the run: the targets list their ratios, judged only when every case of theirs ran or one misses)
    opencv = targets["affine forward >= 1.2x OpenCV warpAffine (float32) on every 2-D case"]
    assert "affine-b1-28 forward" in opencv.detail
    assert "affine3d-32 forward" in targets["3-D affine forward >= 1.0x JAX's jitted warp"].detail


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and sched_setaffinity (Linux)")
def test_jax_runs_on_one_core_when_torch_runs_on_one_thread() -> None:
    """XLA sizes its CPU pool by the affinity when its client is made (the XLA_FLAGS recipe left
    JAX on both cores of a 2-core machine): its work takes no more CPU time than wall time."""
    pytest.importorskip("jax", reason=NEEDS_JAX)
    code = (
        "import os, time, torch; torch.set_num_threads(1)\n"
        "from torchstn.bench import _jax\n"
        "jax = _jax.import_jax()\n"
        "import jax.numpy as jnp\n"
        "f, fb = _jax.jax_warp_and_vjp((224, 224))\n"  # (large enough for XLA to split: 1.86 cores before)
        "x = jnp.ones((16, 3, 224, 224)); m = jnp.tile(jnp.array([[[.9, .1, .05], [-.1, .9, 0.]]]), (16, 1, 1))\n"
        "jax.block_until_ready(fb(x, m, x))\n"
        "cpu0, wall0 = time.process_time(), time.perf_counter()\n"
        "for _ in range(5): jax.block_until_ready(fb(x, m, x))\n"
        "print(jax.devices()[0].platform); print(_jax.jax_setup())\n"
        "print((time.process_time() - cpu0) / (time.perf_counter() - wall0))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    platform, setup, cores = run.stdout.splitlines()
    assert platform == "cpu" and "one core" in setup and float(cores) < 1.2
