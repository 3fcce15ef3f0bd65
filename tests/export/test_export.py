"""Exported models (ONNX through onnxruntime, TorchScript) give eager PyTorch's outputs, any batch size."""

import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchstn as stn
from tests._helpers import perturb, random_images
from torchstn.export import check_export, export_onnx, export_torchscript, exported_files, load_exported, run_exported
from torchstn.models import create_model

FAMILIES = ["aff", "proj", "tps"]
ATOL = 1e-4


class _Warped(nn.Module):
    """A registry model's warped input and its logits, both checked after export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.transform_input(x), self.model(x)


class _AllFamilies(nn.Module):
    """st-cnn-aff, st-cnn-proj and st-cnn-tps side by side: one (slow) ONNX export covers all three."""

    def __init__(self) -> None:
        super().__init__()
        models = (perturb(create_model(f"st-cnn-{f}"), i).eval() for i, f in enumerate(FAMILIES))
        self.models = nn.ModuleList(_Warped(m) for m in models)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for m in self.models for t in m(x))


def test_onnx_matches_eager_for_every_registry_family(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _AllFamilies().eval()
    x5 = random_images(5, seed=1)
    with torch.no_grad():
        warped = model(x5)[0::2]
    for w in warped:  # the transformers really warp, so the parity below means something
        assert (w - x5).abs().max() > 0.05
    path = export_onnx(model, random_images(2, seed=1), tmp_path / "models.onnx")  # exported with batch 2 ...
    assert check_export(path, model, x5) < ATOL  # ... run with batch 5
    # one self-contained file (torch's exporter writes the weights to models.onnx.data by default) ...
    assert sorted(tmp_path.iterdir()) == [path]
    assert exported_files(path) == [path]
    alone = tmp_path / "copied"
    alone.mkdir()
    copy = Path(shutil.copy(path, alone))  # ... that runs when copied alone
    assert check_export(copy, model, x5) < ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_torchscript_matches_eager(tmp_path: Path, family: str) -> None:
    model = _Warped(perturb(create_model(f"st-cnn-{family}")).eval())
    path = export_torchscript(model, random_images(2, seed=1), tmp_path / "model.pt")
    assert check_export(path, model, random_images(5, seed=1)) < ATOL
    loaded = torch.jit.load(str(path))
    assert loaded(random_images(3, seed=1))[1].shape == (3, 10)


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline()], ids=str)
def test_legacy_onnx_exporter_matches_eager(tmp_path: Path, transform: stn.Transform) -> None:
    pytest.importorskip("onnxruntime")
    st = perturb(stn.SpatialTransformer(transform, stn.conv_localization(3, (24, 20)), output_size=(12, 16))).eval()
    path = export_onnx(st, torch.rand(1, 3, 24, 20), tmp_path / "st.onnx", dynamo=False)  # batch 1 -> 2
    assert check_export(path, st, torch.rand(4, 3, 24, 20)) < ATOL
    assert sorted(tmp_path.iterdir()) == [path]  # one self-contained file here too


def test_onnx_of_a_cpab_warp_runs_in_onnxruntime(tmp_path: Path) -> None:
    """The time-series warp too (its integration once had a Where of booleans, which onnxruntime lacks)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    st = perturb(stn.SpatialTransformer(stn.CPAB1D(tessellation=4), nn.Sequential(nn.Flatten(), nn.Linear(20, 8)))).eval()
    x = torch.randn(5, 1, 20)
    assert (st(x) - x).abs().max() > 0.05  # it really warps
    path = export_onnx(st, torch.randn(2, 1, 20), tmp_path / "cpab.onnx")
    assert check_export(path, st, x) < ATOL


def test_exported_files_names_the_external_data(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    st = perturb(stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))).eval()
    path = export_onnx(st, torch.rand(2, 1, 16, 16), tmp_path / "st.onnx", dynamo=False)
    # what an export over protobuf's 2 GB limit looks like: the weights in a file beside the model
    big = tmp_path / "big.onnx"
    onnx.save_model(
        onnx.load(str(path)), str(big), save_as_external_data=True, location="big.weights", size_threshold=0
    )
    assert exported_files(big) == [big, tmp_path / "big.weights"]
    assert check_export(big, st, torch.rand(3, 1, 16, 16)) < ATOL  # the references are what onnxruntime reads
    assert exported_files(path) == [path]
    script = export_torchscript(st, torch.rand(2, 1, 16, 16), tmp_path / "st.pt")
    assert exported_files(script) == [script]
    with pytest.raises(FileNotFoundError, match="no exported model"):
        exported_files(tmp_path / "missing.onnx")


def test_onnx_export_replaces_an_earlier_exports_weights_file(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    stale = tmp_path / "st.onnx.data"
    stale.write_bytes(b"the weights of an earlier two-file export to the same path")
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))
    path = export_onnx(st, torch.rand(2, 1, 16, 16), tmp_path / "st.onnx", dynamo=False)
    assert sorted(tmp_path.iterdir()) == [path]


class _Warns(nn.Module):
    """A model that warns while it runs, as a user's model (or torchstn's code) might."""

    def __init__(self) -> None:
        super().__init__()
        self.st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("a warning of the model's own", UserWarning, stacklevel=1)
        return self.st(x)


def test_the_export_silences_only_the_exporters_noise(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    filters, log_filters = list(warnings.filters), list(registry.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(_Warns(), torch.rand(2, 1, 16, 16), tmp_path / "w.onnx", dynamo=False)
    assert any("a warning of the model's own" in str(w.message) for w in caught)
    assert warnings.filters == filters and registry.filters == log_filters  # restored afterwards


def test_fixed_batch_when_asked(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)), output_size=(16, 16))
    fixed = export_onnx(st, torch.rand(3, 1, 16, 16), tmp_path / "fixed.onnx", dynamic_batch=False, dynamo=False)
    dynamic = export_onnx(st, torch.rand(3, 1, 16, 16), tmp_path / "dynamic.onnx", dynamo=False)

    def batch_dim(path: Path):
        dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
        return dim.dim_value or dim.dim_param

    assert batch_dim(fixed) == 3
    assert batch_dim(dynamic) == "batch"


def test_export_restores_the_training_mode(tmp_path: Path) -> None:
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)), output_size=(16, 16)).train()
    export_torchscript(st, torch.rand(2, 1, 16, 16), tmp_path / "st.pt")
    assert st.training


def test_bad_arguments_name_themselves(tmp_path: Path) -> None:
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        export_torchscript(lambda x: x, torch.rand(2, 1, 16, 16), tmp_path / "f.pt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example must be a torch.Tensor"):
        export_torchscript(st, [[1, 2]], tmp_path / "f.pt")  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError, match="no exported model"):
        check_export(tmp_path / "missing.onnx", st, torch.rand(2, 1, 16, 16))


def test_torch_export_leaves_eager_mode_working() -> None:
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (17, 23))).eval()
    x = torch.rand(2, 1, 17, 23)  # a size no other test uses, so the grid cache misses during export
    try:
        torch.export.export(st, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        out = st(x)
        assert type(out) is torch.Tensor, f"eager call after torch.export returned {type(out).__name__}"
    finally:
        stn.clear_caches()


def test_torchscript_without_output_size(tmp_path: Path) -> None:
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))
    path = export_torchscript(st, torch.rand(2, 1, 16, 16), tmp_path / "st.pt")
    assert check_export(path, st, torch.rand(3, 1, 16, 16)) < ATOL


@pytest.mark.parametrize("test_samples", ["mean", 10])
def test_a_pstn_that_ran_eagerly_exports_with_a_dynamic_batch(test_samples) -> None:
    """marginalize compared the logits' rows with the last eager pass's batch: torch.export
    after any eager call failed ("of 3 inputs, got (s77, 10)") or specialised the batch,
    and torchstn export wrote a fixed-batch ONNX file that then failed its own check."""
    torch.manual_seed(0)
    model = create_model("p-stn", test_samples=test_samples).eval()
    with torch.no_grad():
        model(torch.rand(3, 1, 28, 28))  # an eager call first, as training or evaluation makes
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    x = torch.rand(5, 1, 28, 28)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        got = program.module()(x)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        expected = model(x)
    assert got.shape == (5, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_pstn_that_samples_at_test_time_passes_its_torchscript_check(tmp_path: Path) -> None:
    """check_export compared two different draws of a P-STN's test-time θ (1.2e-2 apart:
    `torchstn export --format torchscript` of the registry p-stn always failed its check);
    both now run from one seed."""
    torch.manual_seed(0)
    model = perturb(create_model("p-stn", test_samples=10)).eval()
    path = export_torchscript(model, torch.rand(2, 1, 28, 28), tmp_path / "pstn.pt")
    x = torch.rand(3, 1, 28, 28)
    state = torch.random.get_rng_state()
    assert check_export(path, model, x) < ATOL
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator left alone


def test_onnx_of_a_tps_warp_without_a_warm_up_call(tmp_path: Path) -> None:
    """Exported on a cache miss, the spline's radial basis at a control point itself was
    0 * log(tiny) with the float64 tiny folded to float32 0: the ONNX grid was NaN there and
    onnxruntime's warp 0.72 off (a warm-up call had hidden it)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    class _TPSWarp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tps = stn.ThinPlateSpline(control=(3, 3))

        def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            return stn.warp(x, theta, self.tps, (5, 7))

    stn.clear_caches()
    model = _TPSWarp()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 9, generator=generator)
    theta = model.tps.identity(batch=2) + 0.15 * torch.randn(2, 18, generator=generator)
    with warnings.catch_warnings():  # (torch's own deprecations; export_onnx would warm the cache up first)
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, theta), tmp_path / "tps.onnx", dynamo=True, external_data=False,
                          input_names=["x", "theta"], verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "tps.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": x.numpy(), "theta": theta.numpy()})[0])
    torch.testing.assert_close(got, model(x, theta), atol=ATOL, rtol=0)


def test_the_legacy_exporter_leaves_torch_s_onnx_log_as_it_was(tmp_path: Path) -> None:
    """torch's TorchScript-based exporter turns its ONNX log on and never off (it tests a
    function for truth), so after one export_onnx(dynamo=False) the process logged every
    later export's graph; the flag is set back."""
    pytest.importorskip("onnx")
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16))).eval()
    before = torch._C._jit_is_onnx_log_enabled()
    export_onnx(st, torch.rand(2, 1, 16, 16), tmp_path / "st.onnx", dynamo=False)
    assert torch._C._jit_is_onnx_log_enabled() == before


def test_the_python_api_names_the_extra_without_onnx(tmp_path: Path, monkeypatch) -> None:
    """export_onnx said what was missing but not what to install, and exported_files and
    load_exported raised a bare ModuleNotFoundError (the CLI named the extra)."""
    import sys

    from torchstn.export import load_exported

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not a zip archive")  # (an ONNX file, by content)
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as without the extra
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    calls = {"onnx and onnxscript": lambda: export_onnx(model, torch.rand(1, 4), onnx_file),
             "onnx": lambda: exported_files(onnx_file), "onnxruntime": lambda: load_exported(onnx_file)}
    for missing, call in calls.items():
        with pytest.raises(ImportError, match=rf"needs {missing}, which .*: pip install 'torchstn\[export\]'"):
            call()


class _AffineWarp(nn.Module):
    """``stn.warp`` of an image by a given θ: a bilinear, zeros-padded 2-D warp (F.grid_sample's own path)."""

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return stn.warp(x, theta, stn.Affine())


def _exported_run(kind: str, model: nn.Module, example: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...],
                  path: Path) -> tuple[torch.Tensor, ...]:
    """``model`` exported with ``example`` by ``kind``, run on ``inputs`` (another batch size)."""
    if kind == "torch.export":
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example))
        out = program.module()(*inputs)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)
    if kind == "torchscript":
        path = export_torchscript(model, example, path.with_suffix(".pt"))
    else:
        pytest.importorskip("onnxruntime")
        if kind == "onnx":
            pytest.importorskip("onnxscript")
        path = export_onnx(model, example, path, dynamo=kind == "onnx")
    return run_exported(load_exported(path), inputs)


EXPORTS = ["onnx", "onnx-legacy", "torchscript", "torch.export"]


@pytest.mark.parametrize("kind", EXPORTS)
def test_a_non_finite_theta_gives_nan_in_every_export(tmp_path: Path, kind: str) -> None:
    """torchstn's policy (a non-finite grid point is NaN in every channel) in the exported
    graph too: the exports relied on the runtime's grid sampler, and onnxruntime's GridSample
    reads a NaN or Inf point as a finite value (0.066 where eager gave NaN, both exporters)."""
    model = _AffineWarp().eval()
    x = random_images(4, (3, 8, 9), seed=2)
    theta = stn.Affine().identity(4) + 0.1 * torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    theta[1, 0], theta[2, 4], theta[3, 2] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        expected = model(x, theta)
    assert not expected[0].isnan().any() and expected[1:].isnan().all()  # eager: NaN in every channel
    (got,) = _exported_run(kind, model, (x[:2], stn.Affine().identity(2)), (x, theta), tmp_path / "warp.onnx")
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0, equal_nan=True)


@pytest.mark.parametrize("kind", EXPORTS)
def test_a_nan_pixel_through_a_whole_model_gives_eager_s_nan_in_every_export(tmp_path: Path, kind: str) -> None:
    """A NaN pixel reaches st-cnn-aff's θ: eager's warped image and logits of that sample are
    NaN, and an exported file's must be too (onnxruntime gave finite logits)."""
    model = _Warped(perturb(create_model("st-cnn-aff")).eval())
    x = random_images(3, seed=3)
    x[1, 0, 5, 5] = float("nan")
    with torch.no_grad():
        expected = model(x)
    assert all(e[1].isnan().all() and not e[[0, 2]].isnan().any() for e in expected)
    got = _exported_run(kind, model, (random_images(2, seed=1),), (x,), tmp_path / "model.onnx")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0, equal_nan=True)


def test_an_onnx_file_whose_weights_hold_a_zip_signature_is_read_as_onnx(tmp_path: Path) -> None:
    """zipfile.is_zipfile looks for an end-of-archive record anywhere in a file's last 64 KB: an
    ONNX file whose weights held its 4 bytes counted as TorchScript, and load_exported failed in
    torch.jit.load (so did `torchstn export`'s own check). A TorchScript file starts with a zip
    archive's first local header; the formats are told apart by that."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import struct

    lin = nn.Linear(3, 8)
    with torch.no_grad():
        lin.bias[3] = struct.unpack("<f", b"PK\x05\x06")[0]
    path = export_onnx(lin, torch.rand(2, 3), tmp_path / "pk.onnx")
    x = torch.rand(4, 3)
    session = load_exported(path)
    torch.testing.assert_close(torch.as_tensor(run_exported(session, (x,))[0]), lin(x).detach(), atol=1e-6, rtol=1e-5)
    assert exported_files(path) == [path]
    script = export_torchscript(lin, torch.rand(2, 3), tmp_path / "pk.onnx.pt")
    assert isinstance(load_exported(script), torch.jit.ScriptModule) and exported_files(script) == [script]
