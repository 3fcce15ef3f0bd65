"""``export_onnx`` and ``export_torchscript``: deployable copies of a model, checked against eager."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["check_export", "export_onnx", "export_torchscript", "exported_files", "load_exported", "run_exported"]

Example = torch.Tensor | Sequence[torch.Tensor]


def _as_tuple(example: Example) -> tuple[torch.Tensor, ...]:
    inputs = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError(
            "example must be a torch.Tensor or a sequence of tensors (the model's positional inputs), "
            f"got {type(example).__name__}"
        )
    return inputs


def _prepare(model: object, example: Example, dynamic_batch: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Validate, and run the model once eagerly on the example.

    The eager pass fills torchstn's caches of θ-independent grid parts (the base grid,
    the TPS operator) with real tensors for this size, device and dtype, so that the
    exporters record them as constants instead of tracing their construction (and so
    that tracing never stores a placeholder tensor in those caches).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example)
    if dynamic_batch:
        if any(t.dim() == 0 for t in inputs):
            raise ValueError("dynamic_batch=True needs a batch axis: every example input must have at least 1 dimension")
        # an exporter specialises a size-1 axis to 1; a batch of 2 keeps the batch axis symbolic
        inputs = tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in inputs)
    with torch.no_grad():
        model(*inputs)
    return model, inputs


class _EvalMode:
    """Put a model in eval mode for the export and restore its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.training = model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.training)


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}{i}" for i in range(n)]


class _DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


#: the logger of torch's ONNX operator registry, which names every torchvision operator it
#: skips when torchvision is not installed (torchstn's models use none of them)
_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


#: the module of torch's TorchScript-based exporter whose ``exporter_context`` calls ``setup_onnx_logging``
_TORCHSCRIPT_EXPORTER = "torch.onnx._internal.torchscript_exporter.utils"


@contextlib.contextmanager
def _onnx_log_as_it_was() -> Iterator[None]:
    """Keep torch's C++ ONNX log on or off as it was while an exporter runs, and after it.

    torch 2.13's ``setup_onnx_logging`` tests a function for truth, so the TorchScript-based
    exporter switches the log on for every export and leaves it on: a failing export printed
    its whole TorchScript graph ("Torch IR graph at exception: ...", hundreds of lines) on
    stdout, from C++ where no Python redirection sees it, and the process logged every later
    export. For this call the exporter's ``setup_onnx_logging`` is one that reads the flag
    (exports run one at a time: torch's exporters keep global state); the flag is also set
    back afterwards, for a torch that keeps that function elsewhere.
    """
    log_on, set_log = (getattr(torch._C, f"_jit_{n}_onnx_log_enabled", None) for n in ("is", "set"))  # (private)
    if log_on is None or set_log is None:
        yield
        return
    was_on = log_on()

    @contextlib.contextmanager
    def setup_onnx_logging(verbose: bool) -> Iterator[None]:
        set_log(was_on or verbose)
        yield

    try:
        exporter = importlib.import_module(_TORCHSCRIPT_EXPORTER)
    except ImportError:
        exporter = None
    original = getattr(exporter, "setup_onnx_logging", None)
    if original is not None:
        exporter.setup_onnx_logging = setup_onnx_logging  # type: ignore[union-attr]
    try:
        yield
    finally:
        if original is not None:
            exporter.setup_onnx_logging = original  # type: ignore[union-attr]
        set_log(was_on)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters' messages that say nothing about the exported model, for this call only.

    Only these, matched by their text: the exporter's warnings and errors about the model,
    and torchstn's own, still reach the user; torch's ONNX log stays as it was
    (:func:`_onnx_log_as_it_was`).
    """
    skipped_torchvision = _DropMessages("torchvision is not installed. Skipping torchvision::")
    registry = logging.getLogger(_REGISTRY_LOGGER)
    registry.addFilter(skipped_torchvision)
    try:
        with warnings.catch_warnings(), _onnx_log_as_it_was():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            # torch.export deep-copies its own LeafSpec objects (torch 2.13), which warns about
            # torch's own use of a deprecated class; nothing a user can act on
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            yield
    finally:
        registry.removeFilter(skipped_torchvision)


def _onnx_dynamo(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: tuple[list[str], list[str]],
    dynamic_batch: bool, opset: int | None,
) -> None:
    """``torch.onnx.export`` through ``torch.export``: a dynamic batch is a symbolic ``Dim`` of every input.

    ``external_data=False``: the weights go into the ``.onnx`` file itself (the exporter's
    default, ``True``, always writes them to ``<file>.data`` beside it); torch still writes
    ``<file>.data`` when the weights exceed protobuf's 2 GB limit, where there is no choice.
    """
    dynamic_shapes = tuple({0: torch.export.Dim("batch", min=1)} for _ in inputs) if dynamic_batch else None
    torch.onnx.export(
        model, inputs, path, dynamo=True, input_names=names[0], output_names=names[1],
        dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False, external_data=False,
    )


class _PositionalOnly(nn.Module):
    """``model`` called with the example's inputs only: the TorchScript-based exporter also passes
    every defaulted argument of ``forward``, a flag such as ``return_params=False`` as a traced
    tensor that the model would have to read (a ``TracerWarning``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> object:
        return self.model(*inputs)


def _onnx_legacy(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: tuple[list[str], list[str]],
    dynamic_batch: bool, opset: int | None,
) -> None:
    """The TorchScript-based ``torch.onnx.export``: a dynamic batch is a named axis of every input and output.

    It writes one file, and external data only above protobuf's 2 GB limit; the path is given
    as a ``str``, the only form for which it knows where to put external data.
    """
    dynamic_axes = {name: {0: "batch"} for name in names[0] + names[1]} if dynamic_batch else None
    torch.onnx.export(
        _PositionalOnly(model), inputs, str(path), dynamo=False, input_names=names[0], output_names=names[1],
        dynamic_axes=dynamic_axes, opset_version=opset if opset is not None else 17,
    )


def export_onnx(
    model: nn.Module,
    example: Example,
    path: str | Path,
    dynamic_batch: bool = True,
    *,
    opset: int | None = None,
    dynamo: bool = True,
) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file.

    Args:
        model: any module, e.g. a :class:`~torchstn.SpatialTransformer` or a registry
            model; exported in eval mode (its mode is restored afterwards). A
            :class:`~torchstn.ProbabilisticSpatialTransformer` that samples θ at test time
            from a Student-t does not export (its draws need a Gamma sampler, which ONNX
            lacks); with ``test_samples="mean"`` it warps by the mean and does.
        example: the positional input(s) to trace with, e.g. ``torch.rand(2, 1, 28, 28)``.
            A batch of 1 is repeated to 2 when ``dynamic_batch`` (exporters treat size-1
            axes as constants).
        path: where to write the ``.onnx`` file (parent folders are created).
        dynamic_batch: leave the first axis of every input and output symbolic, so the
            file runs with any batch size; otherwise the example's batch is fixed.
        opset: ONNX opset version (default: the exporter's).
        dynamo: use ``torch.export`` (PyTorch's current exporter, needs ``onnxscript``);
            ``False`` uses the older TorchScript-based exporter, which cannot export
            :class:`~torchstn.transforms.CPAB1D` warps (it has no ``expm1``).

    Returns:
        The path written. Inputs are named ``input`` (``input0``, ``input1``, ... for
        several) and outputs ``output`` (``output0``, ...). The file is self-contained
        (weights included) and can be copied alone, unless the weights exceed protobuf's
        2 GB limit: then they go to external-data files beside it, which
        :func:`exported_files` lists. A ``<file>.data`` left beside ``path`` by an earlier
        export to the same path is removed first, since the new file does not use it.

    Convention:
        The spatial size is fixed at the example's: the grid's θ-independent part
        (normalised base grid, TPS operator) is stored in the file as a constant, and
        θ flows through the graph as in eager mode. Needs the ``export`` extra
        (``pip install 'torchstn[export]'``).

    Example:
        >>> import tempfile, pathlib
        >>> st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     path = export_onnx(st, torch.rand(2, 1, 28, 28), pathlib.Path(d) / "st.onnx")
    """
    # (the TorchScript-based exporter raised torch's OnnxExporterError, no ImportError)
    _needs(("onnx", "onnxscript")[: 2 if dynamo else 1], "ONNX export")
    model, inputs = _prepare(model, example, dynamic_batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # the dynamo exporter's sidecar name
    with _EvalMode(model), torch.no_grad(), _quiet_export():
        outputs = model(*inputs)
        n_out = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
        names = _names("input", len(inputs)), _names("output", n_out)
        (_onnx_dynamo if dynamo else _onnx_legacy)(model, inputs, path, names, dynamic_batch, opset)
    if opset is not None:
        _check_opset(path, opset)
    return path


def _check_opset(path: Path, opset: int) -> None:
    """Raise ``ValueError`` (the file removed) where the file's opset is not the one asked for:
    torch's exporter falls back to its own when it cannot convert (it printed a traceback of
    its version converter and wrote opset 18 for ``opset=11``)."""
    import onnx

    written = [entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import
               if entry.domain in ("", "ai.onnx")]
    if written != [opset]:
        path.unlink()
        raise ValueError(f"the ONNX exporter could not write opset {opset} (it wrote {written[0] if written else '?'}); "
                         "give that opset or none")


def export_torchscript(model: nn.Module, example: Example, path: str | Path, dynamic_batch: bool = True) -> Path:
    """Trace ``model`` (in eval mode) with ``torch.jit.trace`` and save it.

    Args:
        model: any module; traced in eval mode (its mode is restored afterwards).
        example: the positional input(s) to trace with.
        path: where to write the ``.pt`` file (load it with ``torch.jit.load``, no
            torchstn needed).
        dynamic_batch: repeat a batch-1 example to 2, so that tracing records the batch
            size as a value read from the input rather than a constant.

    Returns:
        The path written.

    Convention:
        Tracing records one path through the Python code: the spatial size and the
        sampling options are fixed at the example's, the batch size is not. θ flows
        through the graph; the θ-independent grid parts are constants.
    """
    model, inputs = _prepare(model, example, dynamic_batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _EvalMode(model), torch.no_grad():
        traced = torch.jit.trace(model, inputs, check_trace=False)
    traced.save(str(path))
    return path


def exported_files(path: str | Path) -> list[Path]:
    """The files an exported model needs at run time: ``path`` first, then its external data.

    An ONNX file keeps its weights in external-data files only when they exceed protobuf's
    2 GB limit; those files are read from the ONNX file's own references (needs ``onnx``).
    A TorchScript file is always one file.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = export_torchscript(torch.nn.Linear(3, 2), torch.rand(2, 3), pathlib.Path(d) / "lin.pt")
        ...     [p.name for p in exported_files(path)]
        ['lin.pt']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if _is_torchscript(path):  # (by content, as load_exported tells them apart)
        return [path]
    _needs(("onnx",), "Reading an ONNX file")
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    locations = dict.fromkeys(  # in the file's order, each once
        entry.value
        for tensor in _tensors(graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    )
    return [path, *(path.parent / location for location in locations)]


def _tensors(graph: object) -> Iterator[object]:
    """Every tensor stored in an ONNX graph: initializers, and constants in node attributes and subgraphs."""
    yield from graph.initializer  # type: ignore[attr-defined]
    for node in graph.node:  # type: ignore[attr-defined]
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _needs(modules: Sequence[str], what: str) -> None:
    """Raise an ``ImportError`` that names the extra to install where one of ``modules`` is missing
    (the CLI said it; from Python ``exported_files`` and ``load_exported`` raised a bare
    ``ModuleNotFoundError``)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          "installed; install the extra: pip install 'torchstn[export]'")


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript file: a zip archive, which starts with a local file
    header. (``zipfile.is_zipfile`` looks for an end-of-archive record anywhere in the last
    64 KB, which an ONNX file's raw weights can hold: one counted as TorchScript.)"""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_exported(path: str | Path) -> object:
    """Load a file written by :func:`export_onnx` (an onnxruntime session) or :func:`export_torchscript`,
    told apart by content (a TorchScript file is a zip archive: it starts with ``PK\\x03\\x04``),
    whatever its suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if not _is_torchscript(path):  # (by suffix, an ONNX file named .pt was read as TorchScript: a traceback)
        _needs(("onnxruntime",), "Running an ONNX file")
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.jit.load(str(path), map_location="cpu")


def run_exported(exported: object, example: Example) -> tuple[torch.Tensor, ...]:
    """Run what :func:`load_exported` returned on CPU inputs; the outputs as a tuple of tensors."""
    inputs = tuple(t.detach().cpu() for t in _as_tuple(example))
    if isinstance(exported, torch.jit.ScriptModule):
        with torch.no_grad():
            out = exported(*inputs)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)
    names = [i.name for i in exported.get_inputs()]  # type: ignore[attr-defined]
    feeds = {name: t.numpy() for name, t in zip(names, inputs)}
    return tuple(torch.from_numpy(o) for o in exported.run(None, feeds))  # type: ignore[attr-defined]


def check_export(path: str | Path, model: nn.Module, example: Example) -> float:
    """The largest absolute difference between the exported file and eager ``model`` on ``example``.

    Run it with a batch size other than the export's to check that the batch is dynamic.
    Both run from the same seed of torch's generator (forked: the caller's state is left as
    it was), so that a model that samples at test time (a P-STN with numeric
    ``test_samples``) draws the same θ in both where the export keeps torch's random ops
    (TorchScript); they compared two different draws.
    """
    inputs = _as_tuple(example)
    with _EvalMode(model), torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        expected = model(*inputs)
    expected = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        got = run_exported(load_exported(path), inputs)
    if len(got) != len(expected):
        raise ValueError(f"the exported model returns {len(got)} outputs, the eager model {len(expected)}")
    errors = []
    for g, e in zip(got, expected):
        if tuple(g.shape) != tuple(e.shape):
            raise ValueError(f"exported output shape {tuple(g.shape)} differs from eager {tuple(e.shape)}")
        errors.append((g.to(torch.float64) - e.detach().cpu().to(torch.float64)).abs().max().item() if g.numel() else 0.0)
    return max(errors)
