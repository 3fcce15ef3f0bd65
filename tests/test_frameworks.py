"""torchstn inside the frameworks people train in.

Each test runs a spatial transformer through one framework's machinery and checks the
result against an independent reference computed with plain PyTorch: Lightning's
training, validation and resumption against a hand-written loop; ``AveragedModel``'s
EMA against the EMA computed by hand; ``torch.compile`` and ``torch.func`` gradients
against eager autograd; a ``torch.export`` program against the module it came from.
The compile and export tests also check that the fused sampler stays one operator
(``torch.ops.torchstn.warp2d``) in the captured graphs rather than being traced away.
"""

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import torchstn as stn
from tests._helpers import perturb
from torchstn.models import create_model

SIZE = (28, 28)  # the ST-CNN's input size; 10 classes


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, *SIZE, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _regressors(model: nn.Module) -> list[nn.Linear]:
    return [m.regressor for m in model.modules() if isinstance(m, stn.SpatialTransformer)]


def _gradients(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_far_from_identity(model: nn.Module, x: torch.Tensor) -> None:
    """The test's warps really move points: θ differs from the identity by more than the tolerances."""
    for st in (m for m in model.modules() if isinstance(m, stn.SpatialTransformer)):
        with torch.no_grad():
            theta = st.predict_params(x)
        identity = st.transform.identity(dtype=theta.dtype).flatten()
        assert (theta - identity).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# PyTorch Lightning


@pytest.mark.parametrize("backend", [None, "torch"], ids=["fused", "grid-path"])
def test_lightning_trains_validates_in_inference_mode_and_resumes(tmp_path: Path, backend: str | None) -> None:
    """Validation under ``torch.inference_mode`` (``Trainer.validate``; Lightning's in-fit
    validation uses ``no_grad``) between training steps, then a resume from Lightning's
    checkpoint: the weights after 4 and 6 steps equal a plain loop over the same batches.

    Both samplers: the grid path saves the cached base grid for backward, so a cache entry
    built in inference mode would break the next training step there.
    """
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    class LitSTCNN(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = create_model("st-cnn-aff")
            for st in self.model.modules():
                if isinstance(st, stn.SpatialTransformer):
                    st.backend = backend
            self.events: list[tuple] = []  # (what, global_step, inference mode on)

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            x, y = batch
            self.events.append(("train", self.global_step, torch.is_inference_mode_enabled()))
            return F.cross_entropy(self.model(x), y)

        def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            x, y = batch
            self.events.append(("val", self.global_step, torch.is_inference_mode_enabled()))
            self.log("val_loss", F.cross_entropy(self.model(x), y))

        def on_train_start(self) -> None:  # after Lightning restored a checkpoint, before the first step
            self.events.append(("start", self.global_step, copy.deepcopy(self.model.state_dict())))

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)  # momentum: the optimiser has state

    train = TensorDataset(*_batch(64, seed=0))
    val = TensorDataset(*_batch(32, seed=1))

    def loaders() -> tuple[DataLoader, DataLoader]:
        return DataLoader(train, batch_size=16), DataLoader(val, batch_size=16)  # 4 and 2 batches, in order

    def trainer(max_steps: int):  # noqa: ANN202
        return lightning.Trainer(
            max_steps=max_steps, limit_val_batches=2, val_check_interval=2, accelerator="cpu", devices=1,
            enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
            default_root_dir=tmp_path,
        )

    stn.clear_caches()  # the first forward pass of this test builds the caches, in inference mode
    torch.manual_seed(0)
    lit = LitSTCNN()
    initial = copy.deepcopy(lit.model)
    assert all(bool((r.weight == 0).all()) for r in _regressors(lit.model))

    with warnings.catch_warnings():  # Lightning's advice (few workers, ...) and its use of deprecated torch names
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")
        first = trainer(max_steps=4)
        first.validate(lit, loaders()[1], verbose=False)  # inference mode, before any training step
        first.fit(lit, *loaders())
        checkpoint = tmp_path / "after-4-steps.ckpt"
        first.save_checkpoint(checkpoint)
        after_four = copy.deepcopy(lit.model.state_dict())
        first.validate(lit, loaders()[1], verbose=False)  # inference mode again, then training resumes below

        resumed = LitSTCNN()  # other random weights: what it trains from must come from the checkpoint
        second = trainer(max_steps=6)
        second.fit(resumed, *loaders(), ckpt_path=checkpoint)

    # Lightning ran what was asked, in the modes we claim (its sanity check validates before step 0)
    steps = [event for event in lit.events if event[0] != "start"]
    assert steps == [
        *[("val", 0, True)] * 2,  # Trainer.validate
        *[("val", 0, False)] * 2,  # Trainer.fit's sanity check
        ("train", 0, False), ("train", 1, False), *[("val", 2, False)] * 2,
        ("train", 2, False), ("train", 3, False), *[("val", 4, False)] * 2,
        *[("val", 4, True)] * 2,  # Trainer.validate
    ]  # (global_step, inference mode on); Lightning validates inside fit under no_grad
    assert first.global_step == 4
    assert not all(bool((r.weight == 0).all()) for r in _regressors(lit.model))  # the ST learnt something

    # the resumed run starts at the saved step from the saved weights, and trains two more steps
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    (what, start_step, start_weights), *rest = resumed.events
    assert (what, start_step) == ("start", 4)
    for name, value in after_four.items():
        torch.testing.assert_close(start_weights[name], value, rtol=0, atol=0)
        torch.testing.assert_close(saved["state_dict"][f"model.{name}"], value, rtol=0, atol=0)
    assert rest == [("train", 4, False), ("train", 5, False), ("val", 6, False), ("val", 6, False)]
    assert second.global_step == 6

    # the reference: the same model, optimiser and batches in a plain loop (epoch 2 restarts the data)
    batches = list(loaders()[0])
    optimiser = torch.optim.SGD(initial.parameters(), lr=0.1, momentum=0.9)
    for step, index in enumerate([0, 1, 2, 3, 0, 1]):
        x, y = batches[index]
        optimiser.zero_grad()
        F.cross_entropy(initial(x), y).backward()
        optimiser.step()
        if step == 3:
            for name, value in initial.state_dict().items():
                torch.testing.assert_close(after_four[name], value, rtol=1e-5, atol=1e-6)
    for name, value in initial.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# EMA with torch.optim.swa_utils


def test_averaged_model_is_the_ema_of_the_recorded_parameters() -> None:
    decay = 0.99
    torch.manual_seed(0)
    model = create_model("st-cnn-aff")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2)
    x, y = _batch(16, seed=3)
    recorded = []
    for _ in range(5):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
        ema.update_parameters(model)
        recorded.append({name: p.detach().double().clone() for name, p in model.named_parameters()})

    # the EMA by hand, in float64: the first update copies, each later one is decay·ema + (1 - decay)·p
    expected = dict(recorded[0])
    for params in recorded[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * params[name] for name in expected}
    averaged = dict(ema.module.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name].double(), value, rtol=0, atol=1e-6)
    # an average, neither the first nor the last parameters (else the check above proves little)
    assert max((expected[n] - recorded[0][n]).abs().max() for n in expected) > 1e-5
    assert max((expected[n] - recorded[-1][n]).abs().max() for n in expected) > 1e-4

    x2 = _batch(8, seed=4)[0]
    reference = torch.func.functional_call(model, {n: v.float() for n, v in expected.items()}, (x2,))
    with torch.inference_mode():
        prediction = ema(x2)
    torch.testing.assert_close(prediction, reference.detach(), rtol=1e-5, atol=1e-5)
    # training the live model continues after the EMA's inference-mode prediction
    optimiser.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# torch.compile


def _recording_backend(graphs: dict[str, str]):  # noqa: ANN202
    """A ``torch.compile`` backend: AOTAutograd's forward and backward graphs, run as traced,
    their text stored in ``graphs["forward"]`` and ``graphs["backward"]``."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def recorder(key: str):  # noqa: ANN202
        def compile_graph(graph_module: torch.fx.GraphModule, example_inputs):  # noqa: ANN001, ANN202
            graphs[key] = str(graph_module.graph)
            return make_boxed_func(graph_module.forward)

        return compile_graph

    def backend(graph_module: torch.fx.GraphModule, example_inputs):  # noqa: ANN001, ANN202
        return aot_module_simplified(
            graph_module, example_inputs, fw_compiler=recorder("forward"), bw_compiler=recorder("backward")
        )

    return backend


def _compiled_training_step_matches_eager(backend) -> None:  # noqa: ANN001
    """Forward and cross-entropy compiled with ``fullgraph=True`` (a graph break is an error),
    the backward AOTAutograd's compiled graph: loss and every parameter gradient equal eager's.

    ``loss.backward()`` stays outside the compiled function: Dynamo does not trace
    ``Tensor.backward()`` (torch 2.13: "Unsupported Tensor.backward() call").
    """
    torch._dynamo.reset()
    model = perturb(create_model("st-cnn-aff"), seed=1)
    x, y = _batch(8, seed=2)
    _assert_far_from_identity(model, x)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    eager_loss = loss_of(x, y)
    eager = _gradients(model, eager_loss)
    compiled_loss = torch.compile(loss_of, fullgraph=True, backend=backend)(x, y)
    compiled = _gradients(model, compiled_loss)

    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert all(bool(r.weight.grad.abs().max() > 1e-4) for r in _regressors(model))  # θ gets a gradient


def test_compiled_training_step_matches_eager_and_keeps_the_fused_operator() -> None:
    graphs: dict[str, str] = {}
    _compiled_training_step_matches_eager(_recording_backend(graphs))
    assert set(graphs) == {"forward", "backward"}
    forward, backward = graphs["forward"], graphs["backward"]
    assert "torch.ops.torchstn.warp2d.default" in forward
    assert "torch.ops.torchstn.warp2d_backward.default" in backward
    assert "warp2d_backward" not in forward
    for graph in (forward, backward):  # the fused operator, not the grid path, in both directions
        assert "grid_sampler" not in graph


@pytest.mark.slow
def test_inductor_training_step_matches_eager() -> None:
    """Inductor compiles the same step (about 30 s on one core without its on-disk cache)."""
    _compiled_training_step_matches_eager("inductor")


# ---------------------------------------------------------------------------------------------
# torch.export


@pytest.fixture
def trained_st() -> nn.Module:
    """A spatial transformer after a few SGD steps towards mirrored images, in eval mode."""
    torch.manual_seed(0)
    model = stn.SpatialTransformer("affine", stn.conv_localization(1, SIZE))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        x = _batch(8, seed=10 + step)[0]
        optimiser.zero_grad()
        (model(x) - x.flip(-1)).square().mean().backward()
        optimiser.step()
    assert model.regressor.weight.abs().max() > 1e-2
    return model.eval()


def test_torch_export_keeps_the_fused_operator_and_matches_the_module(trained_st: nn.Module) -> None:
    x, x2 = _batch(4, seed=20)[0], _batch(4, seed=21)[0]
    _assert_far_from_identity(trained_st, x2)
    program = torch.export.export(trained_st, (x,))
    graph = str(program.graph)
    assert "torch.ops.torchstn.warp2d.default" in graph and "grid_sampler" not in graph
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x2), trained_st(x2), rtol=0, atol=1e-6)


def test_torch_export_with_a_dynamic_batch(trained_st: nn.Module) -> None:
    x = _batch(4, seed=20)[0]
    program = torch.export.export(trained_st, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    assert "torch.ops.torchstn.warp2d.default" in str(program.graph)
    for batch in (5, 1):
        other = _batch(batch, seed=30 + batch)[0]
        with torch.no_grad():
            out = program.module()(other)
            torch.testing.assert_close(out, trained_st(other), rtol=0, atol=1e-6)
        assert out.shape == (batch, 1, *SIZE)


@pytest.mark.parametrize("name", ["ic-stn-2", "c-stn-1"])
def test_torch_export_of_a_cascade_with_a_dynamic_batch(name: str) -> None:
    """A cascade starts from the identity θ of the input's batch, a symbolic size under
    torch.export (once refused: "batch must be an int, got SymInt")."""
    torch.manual_seed(0)
    model = stn.create_model(name).eval()
    x = torch.rand(3, 1, 28, 28)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    other = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), model(other), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# what a user's torch.jit.trace, ONNX export or torch.export prints: nothing from torchstn

_PACKAGE = Path(stn.__file__).parent


def _warnings_from_torchstn(run) -> list[str]:  # noqa: ANN001
    """The warnings ``run()`` raises whose line is in torchstn's code (torch's own are not counted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught
            if Path(w.filename).resolve().is_relative_to(_PACKAGE)]


# one model per module kind: plain, the three 2-D families, cascaded, parallel, probabilistic
_TRACED_MODELS = ["st-cnn-aff", "st-cnn-proj", "st-cnn-tps", "ic-stn-2", "2x-st-cnn", "p-stn"]


@pytest.mark.parametrize("name", _TRACED_MODELS)
def test_tracing_a_model_warns_nothing_from_torchstn(name: str) -> None:
    model = perturb(create_model(name), seed=3).eval()
    x = torch.rand(2, *model.input_shape, generator=torch.Generator().manual_seed(4))
    # the P-STN draws its θ at random: the tracer's own re-run would differ
    assert _warnings_from_torchstn(lambda: torch.jit.trace(model, x, check_trace=name != "p-stn")) == []
    recorders = [m for m in model.modules() if isinstance(m, stn.SpatialTransformer)]
    assert recorders
    for m in recorders:
        m.last_params = None
    assert _warnings_from_torchstn(lambda: torch.export.export(model, (x,))) == []
    assert all(m.last_params is None for m in recorders)  # an exported pass records nothing on the module


@pytest.mark.parametrize("name", ["st-cnn-aff", "ic-stn-2"])
def test_onnx_export_of_a_model_warns_nothing_from_torchstn(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    model = perturb(create_model(name), seed=3).eval()
    x = torch.rand(2, *model.input_shape)
    path = tmp_path / "model.onnx"
    assert _warnings_from_torchstn(lambda: torch.onnx.export(model, (x,), str(path), dynamo=False)) == []
    assert path.stat().st_size > 0


class _Warp(nn.Module):
    def __init__(self, transform: str, align_corners: bool) -> None:
        super().__init__()
        self.transform, self.align_corners = stn.transforms.get_transform(transform), align_corners

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return stn.warp(x, params, self.transform, align_corners=self.align_corners)


def _warp_inputs(transform: stn.Transform, b: int, size: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = transform.identity(batch=b) + 0.1 * torch.randn(b, transform.num_params, generator=g)
    return torch.rand(b, 3, *size, generator=g), params


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_traced_sample_warns_nothing_and_follows_the_batch(ndim: int) -> None:
    """stn.sample's check of the grid's last size read a traced size (a TracerWarning, where
    F.grid_sample gives none); a trace at batch 2 runs at batch 5 as eager does."""
    spatial = (7, 8, 9)[-ndim:]
    g = torch.Generator().manual_seed(3)
    example = (torch.rand(2, 3, *spatial, generator=g), torch.rand(2, *spatial, ndim, generator=g) * 2 - 1)
    traced = []
    assert _warnings_from_torchstn(lambda: traced.append(torch.jit.trace(stn.sample, example))) == []
    x, grid = torch.rand(5, 3, *spatial, generator=g), torch.rand(5, *spatial, ndim, generator=g) * 2 - 1
    torch.testing.assert_close(traced[0](x, grid), stn.sample(x, grid), rtol=0, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("family", ["translation", "attention", "similarity", "affine", "projective", "tps", "affine3d"])
def test_traced_warp_warns_nothing_and_follows_the_input_size(family: str, align_corners: bool) -> None:
    """size=None keeps the input's size: the trace computes the grid from the traced sizes,
    so it is right for inputs of other sizes too (the eager warp is the reference)."""
    warp = _Warp(family, align_corners)
    spatial = (5, 6, 7) if family == "affine3d" else (12, 14)
    other = (3, 4, 9) if family == "affine3d" else (9, 17)
    example = _warp_inputs(warp.transform, 2, spatial, seed=1)
    traced = []
    assert _warnings_from_torchstn(lambda: traced.append(torch.jit.trace(warp, example))) == []
    x, params = _warp_inputs(warp.transform, 3, other, seed=2)
    out = traced[0](x, params)
    assert out.shape == (3, 3, *other)
    torch.testing.assert_close(out, warp(x, params), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["translation", "attention", "similarity", "affine", "projective", "tps"])
def test_onnx_export_of_warp_warns_nothing_from_torchstn(family: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    warp = _Warp(family, False)
    example = _warp_inputs(warp.transform, 2, (12, 14), seed=1)
    path = tmp_path / "warp.onnx"
    assert _warnings_from_torchstn(lambda: torch.onnx.export(warp, example, str(path), dynamo=False)) == []
    assert path.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# torch.func


def test_torch_func_grad_of_a_functional_call_equals_autograd() -> None:
    """``torch.func`` runs the grid path (the operator's autograd formula does not support
    functorch), autograd the fused kernel's backward: two implementations, one gradient. In
    float64: in float32 the two warps' last bits differ (their locations round otherwise), and
    where two values a max-pool compares lie closer than that, its gradient goes to the other
    one, which moved the first convolution's weight gradient by 1% (a fair difference, not a
    wrong gradient)."""
    model = perturb(create_model("st-cnn-aff"), seed=5).double()
    x, y = _batch(8, seed=6)
    x = x.double()
    _assert_far_from_identity(model, x)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    functional = torch.func.grad(loss)(params)
    autograd = _gradients(model, F.cross_entropy(model(x), y))
    assert functional.keys() == autograd.keys()
    for name, grad in autograd.items():
        torch.testing.assert_close(functional[name], grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert all(bool(r.weight.grad.abs().max() > 1e-4) for r in _regressors(model))


# --- shapes-only tracing: FakeTensorMode and make_fx ----------------------------------------------


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


@pytest.mark.parametrize("transform", ["affine", "projective", "tps"])
def test_a_grid_path_call_under_fake_tensor_mode_gives_shapes_whether_or_not_the_cache_is_filled(transform) -> None:
    """A user's FakeTensorMode (shapes, FLOPs or memory without computing): a cached grid part
    from an earlier real call was a real tensor mixed with the mode's fake ones (torch's
    "Please convert all Tensors to FakeTensors first"), and a thin-plate spline's failed even
    on an empty cache."""
    t = stn.get_transform(transform) if transform != "tps" else stn.ThinPlateSpline(control=(3, 3))
    stn.clear_caches()
    real = stn.warp(torch.rand(2, 3, 6, 7), t.identity(2), t, backend="torch")  # (fills the cache)
    for _ in range(2):
        with _fake_mode():
            x, theta = torch.rand(2, 3, 6, 7), torch.rand(2, t.num_params)
            out, grid = stn.warp(x, theta, t, (5, 4), backend="torch"), t.grid(theta, (5, 4))
        assert type(out) is not torch.Tensor and out.shape == (2, 3, 5, 4) and grid.shape == (2, 5, 4, 2)
        stn.clear_caches()
    assert type(real) is torch.Tensor  # (and the cache still holds real tensors for real calls)
    assert torch.equal(stn.warp(real, t.identity(2), t, backend="torch"), stn.warp(real, t.identity(2), t,
                                                                                    backend="torch"))


@pytest.mark.parametrize("transform", ["affine", "tps"])
@pytest.mark.parametrize("tracing_mode", ["fake", "symbolic"])
def test_make_fx_traces_a_warp_after_real_calls_and_the_graph_computes_the_same(transform, tracing_mode) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    t = stn.get_transform(transform) if transform != "tps" else stn.ThinPlateSpline(control=(3, 3))
    x, theta = torch.rand(2, 3, 6, 7), t.identity(2) + 0.05 * torch.randn(2, t.num_params)

    def f(x, theta):
        return stn.warp(x, theta, t, backend="torch")

    expected = f(x, theta)  # (fills the cache)
    graph = make_fx(f, tracing_mode=tracing_mode)(x, theta)
    torch.testing.assert_close(graph(x, theta), expected, rtol=0, atol=1e-6)


def test_every_model_builds_and_runs_under_fake_tensor_mode() -> None:
    """Building a model inside FakeTensorMode (torch's layers do) failed for every model with a
    transformer: the regressor read its identity start from a fake tensor (a data-dependent
    error), a thin-plate spline its control points."""
    for name in stn.models.list_models():
        shape = create_model(name).input_shape
        with _fake_mode():
            model = create_model(name)
            out = model(torch.rand(2, *shape))
        assert type(out) is not torch.Tensor and out.shape[0] == 2, name


def test_an_identity_off_the_cpu_is_traced_under_make_fx_and_fake_modes() -> None:
    """The identity made once per device (no copy from the host in every pass) read its values for
    the cache key, which a fake tensor has not: make_fx and FakeTensorMode trace the copy instead."""
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(lambda t: stn.Affine().identity(2, t.device) + t, tracing_mode="fake")(torch.zeros(2, 6,
                                                                                              device="meta"))
    assert graph(torch.zeros(2, 6, device="meta")).shape == (2, 6)
    with _fake_mode():
        assert stn.ThinPlateSpline(control=(3, 3)).identity(2, "meta").shape == (2, 18)


def _save_matmuls(ctx, op, *args, **kwargs):  # noqa: ANN001, ANN202, ARG001
    """A selective checkpointing policy of torch's documentation: keep matmuls, recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op == torch.ops.aten.mm.default else CheckpointPolicy.PREFER_RECOMPUTE


@pytest.mark.parametrize("batch", [8, 3])
@pytest.mark.parametrize("family", ["tps", "projective"])
def test_selective_checkpointing_with_a_cold_grid_cache_gives_autograds_gradients(batch: int, family: str) -> None:
    """A grid part missing from the cache was built inside selective checkpointing's dispatch
    mode, which saved the builder's matmul; in the recompute the cache hit, and the saved output
    went to the grid's own matmul: silently wrong gradients (TPS at batch 8), or a shape error."""
    import functools

    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    from torchstn._tracing import clear_caches

    t = stn.ThinPlateSpline() if family == "tps" else stn.Projective()
    generator = torch.Generator().manual_seed(batch)
    x0 = torch.rand(batch, 1, 6, 7, dtype=torch.float64, generator=generator)
    p0 = t.identity(batch, dtype=torch.float64) + 0.05 * torch.randn(batch, t.num_params, dtype=torch.float64,
                                                                     generator=generator)

    def f(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return stn.warp(x, p, t, backend="torch").sin()

    x, p = x0.clone().requires_grad_(), p0.clone().requires_grad_()
    f(x, p).sum().backward()
    expected = (x.grad, p.grad)
    for policy in (_save_matmuls, lambda *a, **k: torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE):
        clear_caches()
        x, p = x0.clone().requires_grad_(), p0.clone().requires_grad_()
        context = functools.partial(create_selective_checkpoint_contexts, policy)
        checkpoint(f, x, p, use_reentrant=False, context_fn=context).sum().backward()
        torch.testing.assert_close((x.grad, p.grad), expected)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_the_profiler_records_the_fused_kernels(ndim: int, requires_grad: bool) -> None:
    """The fused kernels' direct calls (the dispatcher skipped where nothing records the call)
    were invisible to torch.profiler: a profiled warp listed no operator at all."""
    from torch.profiler import profile

    t = stn.Affine() if ndim == 2 else stn.Affine3D()
    x = torch.rand(2, 3, *(8,) * ndim, requires_grad=requires_grad)
    theta = t.identity(2) + 0.01
    stn.warp(x, theta, t)  # (the kernel built and the call path warm)
    with profile() as prof:
        out = stn.warp(x, theta, t)
        if requires_grad:
            out.sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert f"torchstn::warp{ndim}d" in names, names
    torch.testing.assert_close(out, stn.warp(x, theta, t, backend="torch"))


def test_profiling_changes_no_value_check() -> None:
    """Profiling took the paths that run under a tracer (the value checks off): a homography whose
    H[2, 2] is 0 gave NaN where it raises unprofiled, and Affine.inverse raised torch's error."""
    from torch.profiler import profile

    flat = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]).view(1, 3, 3)
    with profile():
        with pytest.raises(ValueError, match=r"params\[0, 2, 2\] is 0"):
            stn.warp(torch.rand(1, 1, 5, 5), flat, "projective")
        with pytest.raises(ValueError, match="singular"):
            stn.Affine().inverse(torch.zeros(1, 6))


def test_the_python_backward_nodes_are_named_after_their_operator() -> None:
    """The fused operators' Python autograd nodes were all named EagerBackward (anomaly mode's
    messages named neither torchstn nor the operator)."""
    x = torch.rand(1, 1, 4, 4, 4, requires_grad=True)
    name = stn.warp(x, stn.Affine3D().identity(1), "affine3d").grad_fn.name()
    assert "torchstn" in name.lower() and "warp3d" in name.lower(), name
