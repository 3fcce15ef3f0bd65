"""The benchmark's peers do the same work as torchstn: same image for the same transform.

Otherwise the ratios compare different computations. kornia's conventions (pixel
matrices mapping input to output, its own align_corners default, a TPS solved from point
pairs with an ``r² log r`` kernel) are the easy ones to get wrong.
"""

import pytest
import torch

from torchstn import ThinPlateSpline
from torchstn.bench import Case, _peers, build_workload


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
