"""``torch.compile`` (default backend, CPU) gives eager's outputs, with no graph break.

The default run compiles one module holding a spatial transformer of every 2-D family
(with a flatten-only localisation net: the grid generator and the sampler are what is
under test) and one registry model, the ST-FCN with a thin-plate spline. Inductor's code
generation grows faster than the graph, so the slow test (``pytest -m slow``) compiles
every registry model separately.
"""

import subprocess
import sys

import pytest
import torch
from torch import nn

import torchstn as stn
from tests._helpers import perturb, random_images
from torchstn._tracing import constant_result
from torchstn.models import create_model, list_models

FAMILIES = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.ThinPlateSpline()]
REGISTRY = ["st-fcn-tps"]


class _Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformers = nn.ModuleList(
            perturb(stn.SpatialTransformer(t, nn.Flatten(), output_size=(20, 24), in_features=28 * 28), i)
            for i, t in enumerate(FAMILIES)
        )
        self.models = nn.ModuleList(perturb(create_model(name), 10 + i) for i, name in enumerate(REGISTRY))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*[st(x) for st in self.transformers], *[m(x) for m in self.models])


NAMES = [t.name for t in FAMILIES] + REGISTRY


@pytest.fixture(scope="module")
def outputs() -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
    torch._dynamo.reset()
    model = _Everything().eval()
    x = random_images(4)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)  # fullgraph: a graph break is an error
    return eager, compiled, x


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_compiled_matches_eager(outputs, index: int) -> None:
    eager, compiled, _ = outputs
    assert compiled[index].shape == eager[index].shape
    torch.testing.assert_close(compiled[index], eager[index], atol=1e-5, rtol=1e-5)


def test_the_transformers_really_warp(outputs) -> None:
    eager, _, x = outputs
    for out in eager[: len(FAMILIES)]:
        resized = nn.functional.interpolate(x, size=out.shape[-2:], mode="bilinear")
        assert (out - resized).abs().max() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_compiles(name: str) -> None:
    torch._dynamo.reset()
    model = perturb(create_model(name), 0).eval()
    shape = getattr(model, "input_shape", (1, 28, 28))
    x = random_images(2, shape)
    compiled = torch.compile(model)
    with torch.no_grad(), _eager_random_numbers():  # the P-STN samples θ in evaluation too
        torch.manual_seed(1)
        got = compiled(x)
        torch.manual_seed(1)
        torch.testing.assert_close(got, model(x), atol=1e-5, rtol=1e-5)


class _eager_random_numbers:
    """Make compiled code draw the same random numbers as eager (inductor has its own generator)."""

    def __enter__(self) -> None:
        import torch._inductor.config as config

        self.config, self.before = config, config.fallback_random
        config.fallback_random = True

    def __exit__(self, *exc: object) -> None:
        self.config.fallback_random = self.before


def test_the_first_compiled_warp_of_a_process_does_not_recompile(monkeypatch) -> None:
    """The eager fast path's state (whether its compiled call is loaded) was read before the
    compile check: dynamo guarded on it and the first real run changed it, so the first
    compiled warp of every process recompiled on its second call."""
    from torchstn.sampling import _fused

    monkeypatch.delitem(_fused._library.state, "fast", raising=False)  # as in a fresh process
    torch._dynamo.reset()
    x, theta = random_images(2), stn.Affine().identity(2) + 0.05
    compiled = torch.compile(lambda x, t: stn.warp(x, t, "affine"))
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = compiled(x, theta)
        torch.testing.assert_close(compiled(x, theta), first, rtol=0, atol=0)
    torch.testing.assert_close(first, stn.warp(x, theta, "affine"), rtol=1e-6, atol=1e-6)


def test_the_reference_backend_compiles_whole_and_traces_with_its_gradients(tmp_path) -> None:
    """backend='reference' ran its autograd.Function under the compiler, which dynamo refused
    with fullgraph=True where anything required a gradient ("Unsupported custom jvp"), and
    under the tracer, whose program then could not be saved. Compiled and traced, its forward's
    plain operations are recorded: the eager Function's values and gradients (the points off
    integer pixel coordinates), and NaN, with a NaN gradient in both coordinates, at a
    non-finite point when compiled, as eagerly."""
    torch._dynamo.reset()
    x = random_images(2, (2, 9, 11)).requires_grad_()
    grid = (torch.rand(2, 5, 6, 2) * 2.2 - 1.1).requires_grad_()
    grid_nan = grid.detach().clone()
    grid_nan[1, 2, 3, 0] = float("nan")
    grid_nan.requires_grad_()

    def run(x_, g_):
        return stn.sample(x_, g_, backend="reference")

    compiled = torch.compile(run, backend="eager", fullgraph=True)
    for g in (grid, grid_nan):
        eager_out = run(x, g)
        eager_grads = torch.autograd.grad(eager_out.nansum(), (x, g))
        out = compiled(x, g)
        grads = torch.autograd.grad(out.nansum(), (x, g))
        torch.testing.assert_close(out, eager_out, equal_nan=True)
        for a, b in zip(grads, eager_grads):
            torch.testing.assert_close(a, b, equal_nan=True)
    assert grads[1][1, 2, 3].isnan().all() and out[1, :, 2, 3].isnan().all()
    traced = torch.jit.trace(lambda x_, g_: run(x_, g_), (x.detach(), grid.detach()))
    traced.save(str(tmp_path / "reference.pt"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "reference.pt"))(x.detach(), grid.detach()),
                               run(x, grid).detach())


@pytest.mark.parametrize("name", ["tps", "thin-plate-spline", "cpab", "cpab1d", "translation"])
def test_warp_by_a_name_compiles_whole(name) -> None:
    """warp(x, θ, "tps") made its ThinPlateSpline (or CPAB1D) in every call, inside the trace,
    where dynamo cannot enter its construction's torch.device context (and its system's solve
    and checks broke the graph five times): a name's transform is made at import."""
    torch._dynamo.reset()
    transform = stn.get_transform(name)
    x = torch.rand(2, 2, 9) if transform.ndim == 1 else random_images(2, (2, 9, 11))
    theta = (transform.identity(2) + 0.05 * torch.randn(2, transform.num_params)).requires_grad_()
    compiled = torch.compile(lambda x_, t: stn.warp(x_, t, name), backend="aot_eager", fullgraph=True)
    out = compiled(x, theta)
    torch.testing.assert_close(out, stn.warp(x, theta, transform))
    torch.testing.assert_close(torch.autograd.grad(out.sum(), theta)[0],
                               torch.autograd.grad(stn.warp(x, theta, transform).sum(), theta)[0])


def test_constant_result_marks_a_function_as_torchs_decorator_does(monkeypatch) -> None:
    """Without dynamo loaded, constant_result sets the mark torch.compiler.assume_constant_result sets
    (which imports dynamo to do it): a torch that marks another way fails here."""
    def ours() -> int:
        return 1

    def torchs() -> int:
        return 1

    assert torch.compiler.assume_constant_result(torchs) is torchs
    monkeypatch.delitem(sys.modules, "torch._dynamo")  # (restored after the test)
    assert constant_result(ours) is ours
    assert vars(ours) == vars(torchs) != {}


def test_import_leaves_dynamo_unloaded_and_a_first_compile_takes_the_fused_kernel_whole() -> None:
    """``import torchstn`` does not import torch._dynamo (2.91 s -> 1.54 s), and a process whose
    first warp is compiled (fullgraph: a graph break is an error) still finds the availability
    question a constant (it broke the graph when unmarked)."""
    code = """
import sys, torch
import torchstn as stn
loaded = "torch._dynamo" in sys.modules
x = torch.rand(2, 1, 12, 12)
theta = torch.eye(2, 3) + 0.05 * torch.randn(2, 2, 3)
compiled = torch.compile(lambda x, t: stn.warp(x, t, "affine"), fullgraph=True)(x, theta)
torch.testing.assert_close(compiled, torch.nn.functional.grid_sample(
    x, torch.nn.functional.affine_grid(theta, x.shape, align_corners=False), align_corners=False))
print(loaded)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False"]
