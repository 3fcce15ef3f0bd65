"""Every backend and gradient check on CUDA: the CPU suite's checkers collected again with ``device`` = CUDA,
and what only a GPU run can show (the fused CPU kernel hands over to torch's grid path, training steps).

Run on a lent GPU with ``python -m pytest -q tests/cuda`` (skipped here with the reason
"CUDA is not available on this machine"; ``pytest -rs`` shows it).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import torchstn as stn
from tests._helpers import perturb, random_grid, random_input, random_theta
from tests.cuda.conftest import needs_cuda
from torchstn.testing import check_sampler

# the CPU suite's device-parametrised checkers, collected here with device = cuda (tests/cuda/conftest.py):
# reference sampler against grid_sample (2-D, 3-D), gradcheck of the sampler and of warp for every family and
# backend, gradgradcheck (2-D families, volumes, signals, a given grid), non-finite points and θ, and the grids
from tests.sampling.test_nonfinite import (  # noqa: F401
    test_a_nan_theta_gives_a_nan_output_and_gradient,
    test_non_finite_points_give_nan_and_nothing_else,
)
from tests.sampling.test_operator import (  # noqa: F401
    test_gradgradcheck_2d,
    test_gradgradcheck_sample_of_a_given_grid,
    test_gradgradcheck_volumes_and_signals,
)
from tests.sampling.test_sample import (  # noqa: F401
    test_reference_gradcheck,
    test_reference_matches_grid_sample_2d,
    test_reference_matches_grid_sample_3d,
    test_warp_gradcheck_wrt_params_and_input,
)
from tests.transforms.test_grids import (  # noqa: F401
    test_affine3d_equals_affine_grid,
    test_affine_equals_affine_grid,
    test_projective_with_affine_h_equals_affine,
    test_transform_properties,
)

pytestmark = needs_cuda

BACKENDS = [None, "torch", "fused", "reference"]
PADDINGS = ["zeros", "border", "reflection"]
TRANSFORMS = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(),
              stn.ThinPlateSpline(control=(3, 3)), stn.Affine3D(), stn.Affine1D()]


def _grid_sample(x, grid, mode, padding, align_corners):
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_every_backend_equals_grid_sample(ndim, padding, mode, backend, device, dtype):
    """Values and both gradients of ``sample`` with each backend against ``F.grid_sample`` on the GPU."""
    spatial = (6, 7) if ndim == 2 else (4, 5, 6)
    x = random_input((2, 3, *spatial), dtype, device)
    grid = random_grid((2, *spatial[:-1], 5, ndim), dtype, device)
    fn = lambda x, g, **o: stn.sample(x, g, backend=backend, **o)  # noqa: E731
    check_sampler(fn, _grid_sample, x, grid, mode=mode, padding=padding, align_corners=False,
                  atol=1e-5 if dtype == torch.float32 else 1e-10)


class _OpRecorder(TorchDispatchMode):
    """Records the name of every operator dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.name()))
        return func(*args, **(kwargs or {}))


def _torchstn_operators() -> list[str]:
    """The operators torchstn registers (``torchstn::warp2d``, ...): importing torchstn registers them."""
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("torchstn::"))


@pytest.mark.parametrize("backend", ["fused", None])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.name)
def test_fused_hands_over_to_the_grid_path(transform, backend, device):
    """The fused kernels are CPU code: on CUDA ``warp`` takes the matrix grid + ``F.grid_sample``, the same
    values and gradients as ``backend="torch"``, and no torchstn operator is dispatched."""
    spatial = {1: (9,), 2: (7, 8), 3: (4, 5, 6)}[transform.ndim]
    x0 = random_input((2, 3, *spatial), torch.float32, device)
    theta0 = random_theta(transform, 2, torch.float32, device, scale=0.1)
    results = {}
    for name in ("torch", backend):
        x, theta = x0.clone().requires_grad_(), theta0.clone().requires_grad_()
        with _OpRecorder() as ops:
            out = stn.warp(x, theta, transform, backend=name)
            out.backward(torch.ones_like(out))
        assert not {n for n in ops.names if n.startswith("torchstn::")}, ops.names
        results[name] = (out.detach(), x.grad, theta.grad)
    for a, b in zip(results[backend], results["torch"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_no_torchstn_operator_has_a_cuda_kernel_yet():
    """A tripwire: an operator that gains a CUDA kernel needs its ``torch.library.opcheck`` on CUDA
    (``tests/sampling/test_operator.py``'s, with CUDA tensors) before CUDA users reach it."""
    operators = _torchstn_operators()
    assert {"torchstn::warp2d", "torchstn::warp2d_backward"} <= set(operators)
    with_cuda = [n for n in operators if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    assert not with_cuda, f"{with_cuda} now run on CUDA: opcheck them on CUDA here"


def _train(st: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    """``steps`` SGD steps of a spatial transformer in front of a linear classifier; the losses."""
    head = torch.nn.Linear(images[0].numel(), 10).to(images)
    with torch.no_grad():  # the same head on both devices
        head.weight.copy_(torch.linspace(-0.05, 0.05, head.weight.numel()).reshape(head.weight.shape))
        head.bias.zero_()
    model = torch.nn.Sequential(st, torch.nn.Flatten(), head)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("transform", ["affine", "projective", "tps"])
def test_a_training_step_on_cuda_equals_the_cpu_one(transform, device):
    """Three SGD steps of a SpatialTransformer (float64) give the CPU's losses and parameters on the GPU."""
    st = perturb(stn.SpatialTransformer(transform, stn.conv_localization(1, (16, 16)))).double()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 16, 16, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (8,), generator=generator)
    st_gpu = copy.deepcopy(st).to(device)
    cpu_losses = _train(st, images, labels, steps=3)
    gpu_losses = _train(st_gpu, images.to(device), labels.to(device), steps=3)
    assert cpu_losses[-1] < cpu_losses[0]  # it learns
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-8)
    for (name, p_cpu), p_gpu in zip(st.named_parameters(), st_gpu.parameters()):
        assert p_gpu.device.type == device.type, name
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, atol=1e-8, rtol=1e-7, msg=name)


@pytest.mark.parametrize("what", ["sample-border", "sample-nearest", "sample-3d", "cascade", "pstn-student-t",
                                  "pstn-gaussian-prior", "identity"])
def test_a_forward_pass_never_waits_for_the_device(what, device):
    """Under torch.cuda.set_sync_debug_mode("error") every synchronising call raises: a copy from
    the host (the identity, the P-STN's noise constants and prior), an .item() (the torch
    backend's check of the grid off the zeros-padding bilinear path) once waited in every call."""
    x2, x3 = torch.rand(2, 1, 8, 8, device=device), torch.rand(2, 1, 4, 8, 8, device=device)
    grid = random_grid((2, 8, 8, 2), torch.float32, device)
    loc = stn.conv_localization(1, (8, 8))
    cascade = stn.CascadedSpatialTransformer("affine", loc, steps=2).to(device)
    student = stn.ProbabilisticSpatialTransformer("affine", loc, samples=2).to(device)
    gaussian = stn.ProbabilisticSpatialTransformer("affine", loc, distribution="gaussian",
                                                   prior_covariance=0.1 * torch.eye(6)).to(device)
    calls = {
        "sample-border": lambda: stn.sample(x2, grid, padding="border", backend="torch"),
        "sample-nearest": lambda: stn.sample(x2, grid, "nearest"),
        "sample-3d": lambda: stn.warp(x3, stn.Affine3D().identity(2, device), "affine3d"),
        "cascade": lambda: cascade(x2),
        "pstn-student-t": lambda: (student(x2), student.kl()),
        "pstn-gaussian-prior": lambda: (gaussian(x2), gaussian.kl()),
        "identity": lambda: stn.ThinPlateSpline(control=(3, 3)).identity(2, device),
    }
    calls[what]()  # (the first call fills the caches: a copy from the host once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        calls[what]()
    finally:
        torch.cuda.set_sync_debug_mode("default")
