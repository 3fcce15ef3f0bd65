"""A 3-D volume warp with ``Affine3D``, checked against ``F.affine_grid``, and a transformer on volumes.

Volumes are ``(B, C, D, H, W)``; the 12 parameters are the rows of the 3x4 matrix that
maps output points ``(x, y, z)`` (x along W, y along H, z along D, normalised to
[-1, 1]) to input points, as ``F.affine_grid`` takes it. A quarter turn about the z
axis moves voxel centres onto voxel centres, so it equals ``torch.rot90`` up to float32's
rounding of those centres (about 5e-7).
"""

import math

import torch
import torch.nn.functional as F

import torchstn as stn


def ellipsoid(size: int = 24, smooth: bool = False) -> torch.Tensor:
    """A ``(1, 1, size, size, size)`` volume: an off-centre ellipsoid, so turns show (or a smooth blob)."""
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, size)] * 3, indexing="ij")
    r2 = ((x - 0.3) / 0.5) ** 2 + (y / 0.3) ** 2 + ((z + 0.2) / 0.4) ** 2
    return (torch.exp(-r2) if smooth else (r2 <= 1).float())[None, None]


def rotation_z(angle: float) -> torch.Tensor:
    """Affine3D parameters ``(1, 12)`` of a rotation by ``angle`` about the z (depth) axis."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0, 0.0, s, c, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])


def main(size: int = 24) -> dict:
    volume = ellipsoid(size)
    affine3d = stn.Affine3D()

    # a quarter turn: the output at (x, y) reads the input at (-y, x)
    theta = rotation_z(math.pi / 2)
    turned = stn.warp(volume, theta, affine3d)
    reference = F.grid_sample(volume, F.affine_grid(theta.view(1, 3, 4), volume.shape, align_corners=False),
                              align_corners=False)

    # a general affine map (scale, shear, shift), then its inverse: a smooth volume's
    # interior comes back, up to two linear interpolations
    blob = ellipsoid(size, smooth=True)
    theta2 = torch.tensor([[0.8, 0.1, 0.0, 0.1, 0.0, 0.9, 0.1, 0.0, 0.05, 0.0, 0.85, -0.1]])
    there = stn.warp(blob, theta2, affine3d)
    back = stn.warp(there, affine3d.inverse(theta2), affine3d)
    interior = (slice(None), slice(None), *[slice(size // 4, -size // 4)] * 3)

    # a spatial transformer on volumes: any 3-D localisation net, the regressor starts at the identity
    localization = stn.conv_localization(1, (size, size, size))  # Conv3d layers for a (D, H, W) input
    transformer = stn.SpatialTransformer(affine3d, localization, output_size=(16, 16, 16))
    batch = volume.repeat(2, 1, 1, 1, 1)
    crops = transformer(batch)

    result = {
        "volume": volume,
        "turned": turned,
        "rot90_error": (turned - torch.rot90(volume, 1, dims=(3, 4))).abs().max().item(),
        "affine_grid_error": (turned - reference).abs().max().item(),
        "round_trip_error": (back - blob)[interior].abs().max().item(),
        "transformer_output": tuple(crops.shape),
        "theta": tuple(transformer.predict_params(batch).shape),
    }
    print(f"volume {tuple(volume.shape)}, {int(volume.sum())} voxels inside the ellipsoid")
    print(f"quarter turn vs torch.rot90: max difference {result['rot90_error']:.1e}")
    print(f"quarter turn vs F.affine_grid + F.grid_sample: max difference {result['affine_grid_error']:.1e}")
    print(f"warp then inverse warp, interior: max difference {result['round_trip_error']:.3f}")
    print(f"SpatialTransformer(Affine3D): {tuple(batch.shape)} -> {result['transformer_output']}, θ {result['theta']}")
    return result


if __name__ == "__main__":
    result = main()
