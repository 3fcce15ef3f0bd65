"""mnist-3d, the STN paper's extruded-digit volumes: ground truth, laws, the slab, on-the-fly batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.data import distorted_mnist, get_dataset

N = 24
SIZE, THICKNESS, CANVAS = 36, 8, 60  # the recipe's defaults


@pytest.fixture(scope="module")
def volumes(mnist_dir):
    return distorted_mnist("3d", "test", mnist_dir, seed=0, limit=N, cache=False)


def _decompose(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale (N,), R (N, 3, 3))`` from ``A = K R^T / s`` (the recipe's documented parameterisation)."""
    k = torch.tensor([CANVAS / SIZE, CANVAS / SIZE, CANVAS / THICKNESS], dtype=torch.float64)
    m = params.double().view(-1, 3, 4)[:, :, :3] / k[:, None]
    scale = torch.linalg.det(m).pow(-1.0 / 3.0)
    return scale, (scale[:, None, None] * m).transpose(1, 2)


def test_shapes_and_canonical_slab(volumes):
    assert volumes.images.shape == (N, 1, CANVAS, CANVAS, CANVAS) and volumes.images.dtype == torch.uint8
    assert volumes.params.shape == (N, 12) and isinstance(volumes.transform, stn.Affine3D)
    slab = volumes.canonical()
    assert slab.shape == (N, 1, THICKNESS, 28, 28)
    digits = volumes.originals().float() / 255
    for z in range(THICKNESS):  # the digit, extruded: every slice is the digit
        assert torch.equal(slab[:, 0, z], digits)


def test_ground_truth_rewarps_the_canonical_volume_into_the_sample(volumes):
    slab = volumes.canonical()
    ours = stn.warp(slab, volumes.params, stn.Affine3D(), size=(CANVAS,) * 3)
    assert (ours * 255 - volumes.images.float()).abs().max() <= 0.5 + 1e-3  # the uint8 rounding only
    # and independently of torchstn's sampler: PyTorch's 5-D affine_grid + grid_sample
    grid = F.affine_grid(volumes.params.view(-1, 3, 4), (N, 1, CANVAS, CANVAS, CANVAS), align_corners=False)
    reference = F.grid_sample(slab, grid, align_corners=False)
    assert (reference * 255 - volumes.images.float()).abs().max() <= 0.5 + 1e-2


def test_rotation_scale_laws(volumes):
    scale, rotation = _decompose(volumes.params)
    eye = torch.eye(3, dtype=torch.float64)
    assert (rotation @ rotation.transpose(1, 2) - eye).abs().max() < 1e-5  # a rotation ...
    assert (torch.linalg.det(rotation) - 1).abs().max() < 1e-5  # ... not a reflection
    assert 0.7 - 1e-6 <= float(scale.min()) and float(scale.max()) <= 1.2 + 1e-6
    # R = R_z R_y R_x, each angle within 45 degrees; all three axes are used
    ry = -torch.asin(rotation[:, 2, 0])
    rx = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    rz = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    for angle in (rx, ry, rz):
        assert float(angle.abs().max()) <= math.radians(45) + 1e-5
        assert float(angle.abs().max()) > math.radians(20)


def test_ink_integral_is_the_digits_times_the_slab_volume(volumes):
    # an affine map scales integrals by its determinant: ink(volume) = ink(digit) (size/28)^2 thickness s^3,
    # in voxels, so this checks the extrusion's thickness, the digit's size and the scale law at once
    scale, _ = _decompose(volumes.params)
    ink = volumes.images.double().sum((1, 2, 3, 4)) / 255
    expected = volumes.originals().double().sum((1, 2)) / 255 * (SIZE / 28) ** 2 * THICKNESS * scale**3
    assert ((ink / expected) - 1).abs().max() < 0.01


def test_whole_slab_inside_with_a_blank_outer_layer(volumes):
    v = volumes.images[:, 0]
    for face in (v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1], v[:, :, :, 0], v[:, :, :, -1]):
        assert face.max() == 0
    # and the slab is moved: the ink's centres spread over the canvas
    coords = torch.arange(CANVAS, dtype=torch.float64)
    mass = v.double()
    centre = torch.stack([(mass.sum((2, 3)) * coords).sum(1), (mass.sum((1, 3)) * coords).sum(1),
                          (mass.sum((1, 2)) * coords).sum(1)], 1) / mass.sum((1, 2, 3))[:, None]
    assert float(centre.std(0).min()) > 2.0


def test_dataset_renders_batches_on_the_fly_and_is_fixed_unless_online(mnist_dir, volumes):
    ds = get_dataset("mnist-3d", "test", root=mnist_dir)
    assert ds.input_shape == (1, CANVAS, CANVAS, CANVAS) and ds.num_classes == 10 and len(ds) == 10000
    batch = torch.stack([x for x, _ in ds.__getitems__(list(range(4)))])
    assert torch.equal(batch, volumes.images[:4].float() / 255)  # the same bytes as the fixed set
    ds.set_epoch(5)  # a fixed set stays epoch 0
    assert torch.equal(torch.stack([x for x, _ in ds.__getitems__([0, 1])]), batch[:2])
    originals, params = ds.ground_truth([0, 1])
    assert torch.equal(originals, volumes.canonical()[:2]) and torch.equal(params, volumes.params[:2])
    online = get_dataset("mnist-3d", "train", root=mnist_dir, online=True, limit=8)
    first = online.params.clone()
    online.set_epoch(1)
    assert not torch.equal(online.params, first)


def test_whole_split_refused_without_limit_and_bicubic_refused(mnist_dir):
    with pytest.raises(ValueError, match=r"2\.2 GB as uint8.*limit=.*get_dataset\('mnist-3d', 'test'\)"):
        distorted_mnist("3d", "test", mnist_dir, cache=False)
    with pytest.raises(ValueError, match="bicubic"):
        distorted_mnist("3d", "test", mnist_dir, limit=1, cache=False, mode="bicubic")


def test_options_change_the_slab(mnist_dir):
    for thickness in (2, 8):
        flat = distorted_mnist("3d", "test", mnist_dir, limit=4, cache=False, thickness=thickness, angle=0.0,
                               scale=(1.0, 1.0))
        assert flat.canonical().shape == (4, 1, thickness, 28, 28)
        # no rotation, unit scale: the slab is `thickness` voxels deep, one more where a sub-voxel shift
        # spreads it over a further voxel
        depth = (flat.images[:, 0].amax((2, 3)) > 0).sum(1)
        assert int(depth.min()) >= thickness and int(depth.max()) <= thickness + 1


def test_preview_shows_projections(mnist_dir, tmp_path):
    from torchstn.data._preview import projections

    v = torch.zeros(4, 5, 6)
    v[1, 2, 3] = 1.0
    front, top, side = projections(v)
    assert front.shape == (5, 6) and top.shape == (4, 6) and side.shape == (4, 5)
    assert front[2, 3] == top[1, 3] == side[1, 2] == 1.0
    out = stn.data.preview("3d", tmp_path / "p.png", split="test", n=2, root=mnist_dir)
    assert out.is_file() and out.stat().st_size > 1000
