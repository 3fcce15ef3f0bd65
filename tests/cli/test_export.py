"""``torchstn export``: a checkpoint becomes a file that matches the eager model."""

import contextlib
import logging
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests._helpers import perturb

engine = pytest.importorskip("torchstn.engine", reason="the checkpoint loader lives in torchstn.engine")
pytest.importorskip("safetensors")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    config = TrainConfig(model="st-cnn-tps", model_args={"in_channels": 1, "input_size": 28, "num_classes": 10})
    model = perturb(create_model(config.model, **config.model_args))  # a trained-looking transformer
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model, config, epoch=1, step=10)


def test_torchscript_from_a_run_directory(cli, checkpoint: Path) -> None:
    run = checkpoint.parent.parent
    result = cli("export", run, "--format", "torchscript")
    assert result.status == 0, result.err
    out = run / "export" / "best.pt"
    assert f"wrote {out} (torchscript, st-cnn-tps" in result.out
    assert "max |exported - eager|" in result.out
    assert torch.jit.load(str(out))(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_onnx_from_a_checkpoint_file(cli, checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    result = cli("export", checkpoint, "--out", out, "--legacy-onnx")  # format from the suffix
    assert result.status == 0, result.err
    assert out.is_file()
    assert "(onnx, st-cnn-tps" in result.out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _library_messages() -> Iterator[list[str]]:
    """Every warning and every torch log record at WARNING or above, however often repeated.

    torch's log handler holds the stderr of the moment torch was imported, and pytest records
    warnings itself, so neither would reach the ``cli`` fixture's captured streams.
    """
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx")]  # each has its own handler
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            messages = records.messages
            yield messages
            messages += [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        for logger in loggers:
            logger.removeHandler(records)


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers, so that what C++ code printed has reached the file descriptors
    (C buffers a stdout that is not a terminal until its buffer fills or the process exits)."""
    import ctypes

    if sys.platform != "win32":  # (the C runtime torch links on Windows is not the process's symbol table)
        ctypes.CDLL(None).fflush(None)


def _onnx_only() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")


def test_onnx_is_one_file_and_the_output_is_the_result(cli, checkpoint: Path, tmp_path: Path) -> None:
    _onnx_only()
    out = tmp_path / "export" / "model.onnx"
    with _library_messages() as messages:
        result = cli("export", checkpoint, "--out", out)  # torch's default ONNX exporter
    assert result.status == 0, result.err
    assert sorted(out.parent.iterdir()) == [out]  # no model.onnx.data
    assert f"wrote {out} (onnx, st-cnn-tps" in result.out and "self-contained" in result.out
    assert "max |exported - eager|" in result.out
    for text in (result.out, result.err, *messages):  # no "torchvision is not installed", no FutureWarning
        assert "torchvision" not in text and "Warning" not in text, text
    assert result.err == ""
    alone = tmp_path / "copied"
    alone.mkdir()
    import onnxruntime

    session = onnxruntime.InferenceSession(shutil.copy(out, alone), providers=["CPUExecutionProvider"])
    model, _, _ = engine.load_model(checkpoint)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (got - expected).abs().max() < 1e-4


def test_weights_over_the_protobuf_limit_are_named(cli, checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    _onnx_only()
    from torch.onnx._internal.exporter import _onnx_program

    # torch writes external data above this many bytes of weights (2 GB); 0 makes every model "large"
    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)
    out = tmp_path / "model.onnx"
    result = cli("export", checkpoint, "--out", out)
    assert result.status == 0, result.err
    data = tmp_path / "model.onnx.data"
    assert data.is_file()
    assert "self-contained" not in result.out
    assert f"are in {data} (" in result.out and "copy model.onnx and model.onnx.data together" in result.out
    assert "max |exported - eager|" in result.out  # the pair passes the check


def test_the_help_examples_use_the_demos_runs(cli) -> None:
    from torchstn.engine import demo_configs

    help_text = cli("export", "--help").out
    examples = help_text[help_text.index("examples"):]
    assert "torchstn demo --out runs/demo" in examples
    runs = {line.split()[2].split("/checkpoints/")[0] for line in examples.splitlines() if "torchstn export " in line}
    assert runs and runs <= {f"runs/demo/{c.model}" for c in demo_configs()}, runs


def test_errors_are_one_line(cli, checkpoint: Path, tmp_path: Path) -> None:
    assert "does not exist" in cli("export", tmp_path / "nothing", "--format", "onnx").error_line()
    assert "--batch must be at least 1, got 0" in cli("export", tmp_path, "--batch", "0").error_line()
    assert "invalid choice: 'first'" in cli("export", checkpoint, "--which", "first").err  # a choice, as in eval
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the output's folder should be
    line = cli("export", checkpoint, "--format", "torchscript", "--out", blocked / "m.pt").error_line()
    assert str(blocked) in line
    for fmt in ("torchscript", "onnx"):  # a directory where the file should be (torchscript: once a traceback)
        line = cli("export", checkpoint, "--format", fmt, "--out", tmp_path).error_line()
        assert f"{tmp_path}: is a directory" in line
    for atol in ("-1", "nan", "inf"):  # (the whole export ran and wrote its file, then the check failed)
        line = cli("export", checkpoint, "--atol", atol, "--out", tmp_path / "a.pt").error_line()
        assert "--atol must be a finite number >= 0" in line and not (tmp_path / "a.pt").exists()
    assert "--opset must be in [7, " in cli("export", checkpoint, "--opset", "3").error_line()


@pytest.mark.parametrize("legacy", [False, True])
def test_onnx_without_the_extra_names_it_for_either_exporter(cli, checkpoint: Path, tmp_path: Path, monkeypatch,
                                                             legacy: bool) -> None:
    """Without onnx (the ``export`` extra) both exporters say which extra to install; the
    TorchScript-based one printed a 32-line traceback of torch's OnnxExporterError."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as without the extra
    result = cli("export", checkpoint, "--out", tmp_path / "model.onnx", *(["--legacy-onnx"] if legacy else []))
    assert result.status == 2
    missing = "onnx" if legacy else "onnx and onnxscript"
    assert f"ONNX export needs {missing}, which" in result.err
    assert result.err.count("pip install 'torchstn[export]'") == 1 and "Traceback" not in result.err
    assert not (tmp_path / "model.onnx").exists()


def test_a_suffix_that_is_not_the_format_and_an_opset_the_exporter_cannot_write(cli, checkpoint: Path,
                                                                                tmp_path: Path) -> None:
    """The written file is checked as what it is, whatever its suffix (an ONNX file named .pt was
    read as TorchScript: a traceback after the file was written); an opset that torch's exporter
    cannot convert to (it fell back to its own and printed its converter's traceback) is an
    error, and no file of another opset is left."""
    _onnx_only()
    for fmt, name in (("onnx", "model.pt"), ("torchscript", "model.onnx")):
        result = cli("export", checkpoint, "--format", fmt, "--out", tmp_path / name)
        assert result.status == 0, result.err
        assert f"({fmt}, st-cnn-tps" in result.out and "max |exported - eager|" in result.out
    result = cli("export", checkpoint, "--opset", "11", "--out", tmp_path / "old.onnx")
    assert re.search(r"the ONNX exporter could not write opset 11 \(it wrote \d+\)", result.error_line())
    assert not (tmp_path / "old.onnx").exists()


def test_a_model_the_format_cannot_hold_is_one_line(cli, tmp_path: Path, capfd) -> None:
    """The exporter's own error (a 3-D GridSample the TorchScript-based ONNX exporter has no
    operator for) was printed as hundreds of lines of traceback: one line naming the model
    and the exporter now. Before it, torch's C++ ONNX log wrote the whole TorchScript graph
    ("Torch IR graph at exception: ...", ~270 lines) to the process's stdout, which only a
    capture of file descriptor 1 sees (``cli`` replaces ``sys.stdout``)."""
    pytest.importorskip("onnx")
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    config = TrainConfig(model="st-cnn-3d-aff", model_args={"input_size": 24})
    path = save_checkpoint(tmp_path / "vol.safetensors", create_model(config.model, **config.model_args), config,
                           epoch=1, step=1)
    capfd.readouterr()
    result = cli("export", path, "--out", tmp_path / "vol.onnx", "--legacy-onnx")
    _flush_c_stdio()  # C++ writes through C's stdio, which buffers when stdout is not a terminal
    assert result.status == 2 and "Traceback" not in result.err
    assert "st-cnn-3d-aff cannot be exported with the legacy ONNX exporter: " in result.error_line()
    assert result.out == "" and capfd.readouterr() == ("", "")


def test_an_operator_onnx_has_not_is_named(cli, tmp_path: Path) -> None:
    """A P-STN samples with a Gamma draw, which ONNX has no operator for: the error said only
    "Failed to convert ... This is step 3/3 ... Next steps:" with terminal colour codes; it
    names the operator now."""
    _onnx_only()
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    config = TrainConfig(model="p-stn")
    path = save_checkpoint(tmp_path / "p.safetensors", create_model(config.model), config, epoch=1, step=1)
    line = cli("export", path, "--out", tmp_path / "p.onnx").error_line()
    assert "p-stn cannot be exported with onnx: No ONNX function found for" in line and "_standard_gamma" in line
    assert "\x1b" not in line


def test_onnx_options_of_a_torchscript_export_are_refused(cli, checkpoint: Path, tmp_path: Path) -> None:
    """--legacy-onnx and --opset of an export whose format is TorchScript (from --out's suffix, or
    --format) were ignored without a word: a TorchScript file written where ONNX was meant."""
    cases = [(("--out", tmp_path / "model.bin", "--legacy-onnx", "--opset", "11"), "--legacy-onnx and --opset 11"),
             (("--format", "torchscript", "--opset", "17"), "--opset 17"),
             (("--out", tmp_path / "model.pt", "--legacy-onnx"), "--legacy-onnx")]
    for args, flags in cases:
        line = cli("export", checkpoint, *args).error_line()
        assert flags in line and "torchscript" in line and "onnx" in line.lower(), line
        source = "--format torchscript" if "--format" in args else f"suffix {Path(args[1]).suffix}"
        assert source in line, line
    assert not (tmp_path / "model.bin").exists() and not (tmp_path / "model.pt").exists()
    assert not (checkpoint.parent.parent / "export").exists()


def test_export_says_where_the_exported_model_computes_otherwise_than_the_run(cli, tmp_path: Path) -> None:
    """A bf16 run's export computes in float32, a --ground-truth-init run's takes the image alone: the
    parity check (against the float32 model on the image) passed and nothing said so."""
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    notes = {"precision": "the exported model computes in float32", "ground_truth_init": "takes the image alone"}
    cases = (("precision", "bf16", "cnn"), ("ground_truth_init", True, "ic-stn-2"), (None, None, "cnn"))
    for field, value, model in cases:
        config = TrainConfig(model=model, **({field: value} if field else {}))
        run = tmp_path / model / str(field)
        save_checkpoint(run / "checkpoints" / "best.safetensors", create_model(model), config, epoch=1, step=1)
        result = cli("export", run, "--format", "torchscript")
        assert result.status == 0, result.err
        shown = [field for field, note in notes.items() if note in result.out]
        assert shown == ([field] if field else []), result.out


def test_an_interrupt_a_library_swallowed_is_reported_as_an_interrupt(cli, checkpoint: Path, monkeypatch) -> None:
    """Ctrl-C while torch's exporter imported was swallowed there, and the half-imported module then
    failed: "st-cnn-tps cannot be exported with onnx: module 'torch._dynamo' has no attribute 'exc'"
    (3 of 5 tries at 2.8-3.0 s). Here an exporter that swallows the interrupt and then fails so."""
    import os
    import signal

    import torchstn.export

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")

    monkeypatch.setattr(torchstn.export, "export_torchscript", swallowing)
    result = cli("export", checkpoint.parent.parent, "--format", "torchscript")
    assert result.status == 130 and "interrupted" in result.err and "cannot be exported" not in result.err
    monkeypatch.setattr(torchstn.export, "export_torchscript", lambda *a, **k: (_ for _ in ()).throw(
        AttributeError("no such op")))
    assert "cannot be exported with torchscript: no such op" in cli(
        "export", checkpoint.parent.parent, "--format", "torchscript").error_line()  # (no interrupt: as before)
