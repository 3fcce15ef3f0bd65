"""A thin-plate-spline warp fitted to landmarks, then applied to an image.

Landmark pairs say where each point of the output (target) image should come from in
the input (source) image. A TPS with a 4x4 control grid (32 parameters) is fitted to
them by gradient descent through ``transform_points``, the same differentiable map the
sampling grid is made of; ``stn.warp`` then applies it. Here the landmarks come from a
known TPS, so the fit can be checked against it; with your own landmarks, replace
``target``/``source``.
"""

import torch

import torchstn as stn


def checkerboard(size: int = 64, squares: int = 8) -> torch.Tensor:
    """A ``(1, 1, size, size)`` checkerboard: every distortion shows."""
    idx = torch.arange(size) * squares // size
    return ((idx[:, None] + idx[None, :]) % 2).float()[None, None]


def main(landmarks: int = 30, iterations: int = 60, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tps = stn.ThinPlateSpline(control=(4, 4))

    # landmark pairs: output-frame points and the input-frame points they come from
    # (made here by a known warp: the control points pushed by up to 0.15)
    true_theta = tps.identity(batch=1) + 0.15 * (2 * torch.rand(1, tps.num_params, generator=g) - 1)
    target = 1.8 * torch.rand(1, landmarks, 2, generator=g) - 0.9  # (B, N, 2) normalised (x, y)
    source = tps.transform_points(true_theta, target)

    # fit θ: start at the identity, minimise the squared landmark error
    theta = tps.identity(batch=1).requires_grad_()
    optimizer = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (tps.transform_points(theta, target) - source).pow(2).sum(-1).mean()
        loss.backward()
        return loss

    start = closure().item()
    optimizer.step(closure)
    theta = theta.detach()
    error = (tps.transform_points(theta, target) - source).norm(dim=-1)  # per landmark, normalised units

    # apply the fitted warp to an image
    image = checkerboard()
    warped = stn.warp(image, theta, tps, padding="border")
    result = {
        "rms_before": start**0.5,
        "max_landmark_error": error.max().item(),
        "theta": theta,
        "true_theta": true_theta,
        "image": image,
        "warped": warped,
    }
    print(f"{landmarks} landmarks, RMS error {result['rms_before']:.3f} at the identity")
    pixels = result["max_landmark_error"] * image.shape[-1] / 2
    print(f"fitted TPS: largest landmark error {result['max_landmark_error']:.1e} ({pixels:.1e} pixels)")
    print(f"warped a {tuple(image.shape)} image: {tuple(warped.shape)}")
    return result


if __name__ == "__main__":
    result = main()
