"""CIFAR-10 from the python-version archive (``cifar-10-python.tar.gz``), extracted or not.

The archive holds ``cifar-10-batches-py/`` with five training batches
``data_batch_1`` ... ``data_batch_5`` (10,000 images each) and ``test_batch``
(10,000): each a pickled dict whose ``b"data"`` is a uint8 ``(N, 3072)`` array (the red,
then green, then blue 32x32 plane of each image, rows first) and ``b"labels"`` a list of
``N`` ints in ``0..9``. The batches are unpickled with a restricted unpickler that only
builds dicts, lists, strings, bytes and numpy arrays, so a tampered file cannot run code.

Where the files are looked for, in order: ``root``, ``$TORCHSTN_DATA`` and the user
cache ``$TORCHSTN_CACHE/cifar10`` (each directory and its ``cifar10/`` subdirectory), in
each ``cifar-10-batches-py/``, the batch files themselves, or ``cifar-10-python.tar.gz``
(read in place, nothing is extracted). ``root`` may also be the ``.tar.gz`` itself.
Nothing is downloaded: the error says which files to put where, and the URL.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from torchstn._validation import check_choice
from torchstn.data._mnist import SPLITS, search_dirs, warn_if_not_in_root

__all__ = ["CIFAR10_CLASSES", "CIFAR10_URL", "load_cifar10"]

#: the python-version archive
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: class index -> name (the archive's ``batches.meta``)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_FOLDER = "cifar-10-batches-py"
_ARCHIVE = "cifar-10-python.tar.gz"
_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_SIDE = 32


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: builtins, bytes, and numpy arrays and dtypes."""

    _ALLOWED = {
        ("_codecs", "encode"),  # how protocol 2 writes bytes (Python 3 writing a Python 2 archive)
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")


def _decode(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of one pickled batch (``ValueError`` naming ``where``)."""
    try:
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # a damaged pickle fails in many ways (see _mnist._read_npz)
        raise ValueError(f"{where}: cannot be read as a CIFAR-10 python batch ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: a CIFAR-10 batch is a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise ValueError(f"{where}: a CIFAR-10 batch needs b'data' (a numpy array) and b'labels', got keys {sorted(map(str, batch))}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise ValueError(f"{where}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: b'labels' must be {data.shape[0]} ints, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{where}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, _SIDE, _SIDE), labels.astype(np.int64)


def _from_folder(folder: Path, split: str) -> list[tuple[bytes, str]] | None:
    """The split's batches in ``folder`` (``None`` if none is there; ``FileNotFoundError`` if only some are)."""
    paths = [folder / name for name in _BATCHES[split]]
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    if len(present) != len(paths):
        missing = [p.name for p in paths if not p.is_file()]
        raise FileNotFoundError(
            f"{folder} holds only part of the CIFAR-10 {split} split: {', '.join(missing)} missing; "
            f"extract the whole {_ARCHIVE} ({CIFAR10_URL}) there"
        )
    return [(p.read_bytes(), str(p)) for p in paths]


def _from_archive(archive: Path, split: str) -> list[tuple[bytes, str]]:
    """The split's batches read from the ``.tar.gz`` in place."""
    wanted = {f"{_FOLDER}/{name}": name for name in _BATCHES[split]}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    found[wanted[name]] = tar.extractfile(member).read()  # type: ignore[union-attr]
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{archive}: cannot be read as a .tar.gz ({err}); the file is corrupt or truncated") from err
    missing = [name for name in _BATCHES[split] if name not in found]
    if missing:
        raise ValueError(f"{archive}: no {', '.join(f'{_FOLDER}/{m}' for m in missing)} inside; is it {_ARCHIVE}?")
    return [(found[name], f"{archive}:{_FOLDER}/{name}") for name in _BATCHES[split]]


def _batches(root: str | os.PathLike | None, split: str) -> list[tuple[bytes, str]]:
    if root is not None and Path(root).expanduser().is_file():
        return _from_archive(Path(root).expanduser(), split)
    dirs = search_dirs(root, "cifar10")
    for d in dirs:
        for folder in (d / _FOLDER, d):
            if (hit := _from_folder(folder, split)) is not None:
                warn_if_not_in_root(root, d, "cifar10", "CIFAR-10", read=folder)
                return hit
        if (d / _ARCHIVE).is_file():
            warn_if_not_in_root(root, d, "cifar10", "CIFAR-10", read=d / _ARCHIVE)
            return _from_archive(d / _ARCHIVE, split)
    files = ", ".join(_BATCHES[split])
    archive = Path(root).expanduser() if root is not None and str(root).endswith(".tar.gz") else None
    if archive is not None:  # root names the archive, which is not there: no folder is looked in below it
        dirs = [d for d in dirs if d != archive and archive not in d.parents]
        raise FileNotFoundError(
            f"CIFAR-10 not found: {archive} does not exist; download {CIFAR10_URL} to that path (or point "
            f"root= / --data-dir / TORCHSTN_DATA at a folder holding {_ARCHIVE} or the {_FOLDER}/ folder it "
            f"extracts to). Looked in: {', '.join(str(d) for d in [archive, *dirs])}"
        )
    raise FileNotFoundError(
        f"CIFAR-10 not found: download {CIFAR10_URL} and put {_ARCHIVE} (or the {_FOLDER}/ folder it "
        f"extracts to, holding {files}) into {dirs[0]} (or point root= / --data-dir / TORCHSTN_DATA at "
        f"the folder holding it). Looked in: {', '.join(str(d) for d in dirs)}"
    )


def load_cifar10(root: str | os.PathLike | None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split from the python-version archive: uint8 ``(N, 3, 32, 32)``, int64 ``(N,)``.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (or its batch files, or
            ``cifar-10-python.tar.gz``), or the ``.tar.gz`` itself; ``None`` looks in
            ``$TORCHSTN_DATA`` and the user cache (see the module docstring).
        split: ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"``
            (``test_batch``, 10,000).

    Returns:
        ``(images, labels)``: ``(N, 3, 32, 32)`` uint8 (RGB planes) and ``(N,)`` int64 in
        ``0..9`` (names in :data:`CIFAR10_CLASSES`), fresh tensors.

    Raises:
        FileNotFoundError: no archive found, or a folder with only some of the batches;
            the message names the files, where to put them and the URL.
        ValueError: a batch that is not a CIFAR-10 python batch (the message names it).

    Example:
        >>> import pathlib, pickle, tempfile, numpy as np
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "cifar-10-batches-py"
        >>> folder.mkdir()
        >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 8]}  # the archive's layout
        >>> _ = (folder / "test_batch").write_bytes(pickle.dumps(batch))
        >>> images, labels = stn.data.load_cifar10(folder.parent, "test")
        >>> images.shape, images.dtype, [stn.data.CIFAR10_CLASSES[i] for i in labels]
        (torch.Size([2, 3, 32, 32]), torch.uint8, ['cat', 'ship'])
    """
    check_choice("split", split, SPLITS)
    decoded = [_decode(blob, where) for blob, where in _batches(root, split)]
    images = np.concatenate([d[0] for d in decoded])
    labels = np.concatenate([d[1] for d in decoded])
    return torch.from_numpy(images), torch.from_numpy(labels)
