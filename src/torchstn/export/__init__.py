"""Deployment: ONNX and TorchScript exports of spatial transformers and registry models.

``export_onnx`` and ``export_torchscript`` write files that run without torchstn
(onnxruntime, ``torch.jit.load``) with a dynamic batch size, one self-contained file below
protobuf's 2 GB limit (``exported_files`` lists the files a model needs); ``check_export``
compares a file against the eager model. ``torchstn export RUN_OR_CKPT`` wraps them for trained runs.
ONNX needs the ``export`` extra: ``pip install 'torchstn[export]'``.
"""

from __future__ import annotations

from torchstn.export._export import (
    check_export,
    export_onnx,
    export_torchscript,
    exported_files,
    load_exported,
    run_exported,
)

__all__ = ["check_export", "export_onnx", "export_torchscript", "exported_files", "load_exported", "run_exported"]
