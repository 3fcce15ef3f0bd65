"""Reading MNIST-format data: the four IDX files (gzipped or not) or a Keras-style ``mnist.npz``.

Where the files are looked for, in order: the ``root`` argument, the
``TORCHSTN_DATA`` environment variable, the user cache (``$TORCHSTN_CACHE``, by
default ``~/.cache/torchstn``), each directory itself and its ``mnist/``
subdirectory. Where none has them, the four files are downloaded from the
public mirrors into the first of those locations, each checked against its
SHA-256 and written to a temporary file that is renamed only once it is
complete, so nothing half-written is ever found there. Offline, the error
names the four files and where to put them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from torchstn._validation import caller_stacklevel, check_bool, check_choice, check_path, first_line

__all__ = [
    "MIRRORS",
    "MNIST_FILES",
    "SPLITS",
    "Split",
    "default_cache_dir",
    "download_mnist",
    "find_mnist",
    "found_dir",
    "load_mnist",
    "read_idx",
    "search_dirs",
    "warn_if_not_in_root",
]

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

#: file name -> SHA-256 of its *decompressed* IDX bytes. The hash is taken over the
#: content, not the gzip stream, so any gzip of the canonical bytes (mirrors differ in
#: compression) and the plain files are accepted alike.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: public mirrors of the gzipped IDX files, tried in order
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

_PREFIX = {"train": "train", "test": "t10k"}
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
_DOWNLOAD_TIMEOUT = 30.0


def default_cache_dir() -> Path:
    """The user cache: ``$TORCHSTN_CACHE`` if set, else ``~/.cache/torchstn``.

    Raises:
        RuntimeError: naming both, where neither gives a directory (no home directory: a
            user without a passwd entry and no ``HOME``, or ``~user`` of an unknown user).
        NotADirectoryError: naming ``TORCHSTN_CACHE`` where it is a file (an ``OSError``, which
            the command reports in one line).
    """
    env = os.environ.get("TORCHSTN_CACHE")
    try:
        cache = Path(env).expanduser() if env else Path.home() / ".cache" / "torchstn"
    except RuntimeError as err:
        raise RuntimeError(f"torchstn's cache directory cannot be found ({err}): set TORCHSTN_CACHE to a directory, "
                           "or HOME") from None
    if env and cache.is_file():  # (the first write failed with NotADirectoryError, naming no variable)
        raise NotADirectoryError(f"TORCHSTN_CACHE must name a directory, got the file {cache}")
    return cache


def _file_names(split: str) -> tuple[str, str]:
    return f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"


def search_dirs(root: str | os.PathLike | None, sub: str) -> list[Path]:
    """Directories a loader looks in, in order: ``root``, ``$TORCHSTN_DATA`` and the user
    cache's ``sub/``, each directory itself and its ``sub/`` subdirectory (``sub`` is
    ``"mnist"``, ``"ucr"``, ``"cifar10"``, ...)."""
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    env = os.environ.get("TORCHSTN_DATA")
    if env:
        bases.append(Path(env).expanduser())
    with contextlib.suppress(RuntimeError, NotADirectoryError):  # (no cache directory: the files may be in root)
        bases.append(default_cache_dir() / sub)
    dirs: list[Path] = []
    for base in bases:
        for d in (base, base / sub):
            if d not in dirs:
                dirs.append(d)
    return dirs


def warn_if_not_in_root(root: str | os.PathLike | None, found_in: Path, sub: str, what: str,
                        read: Path | None = None) -> None:
    """Say in a warning that ``what`` was read from the directory ``found_in`` of the search
    order (:func:`search_dirs` with ``sub``) when a ``root`` was given and ``found_in`` is not
    ``root`` or its ``sub/``: a mistyped ``--data-dir`` / ``root=`` must not be silently
    replaced by another copy (a cache or ``$TORCHSTN_DATA`` below ``root``, e.g. ``--data-dir
    ~`` and ``~/.cache/torchstn``, is another copy too). ``read``: the file or folder the
    warning names (default ``found_in``). The warning points at the user's call."""
    if root is not None and found_in not in search_dirs(root, sub)[:2]:
        warnings.warn(f"{what} is not in {root}: reading the copy in {read or found_in}", UserWarning,
                      stacklevel=caller_stacklevel())


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    """Directories to look in for MNIST, in order (each also with its ``mnist/`` subdirectory)."""
    return search_dirs(root, "mnist")


def _download_target(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("TORCHSTN_DATA")
    if not env:
        return default_cache_dir() / "mnist"
    target = Path(env).expanduser()
    if target.is_file():  # (the download failed on mkdir: FileExistsError, naming no variable)
        raise ValueError(f"TORCHSTN_DATA must be the directory that holds the data, got the file {target}; "
                         f"set it to its directory {target.parent}")
    return target


def _find_in(directory: Path, split: str) -> tuple[str, Path | tuple[Path, Path]] | None:
    """``("idx", (images, labels))`` or ``("npz", path)`` if ``directory`` holds the split."""
    found = []
    for name in _file_names(split):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found.append(candidate)
                break
    if len(found) == 2:
        return "idx", (found[0], found[1])
    npz = directory / "mnist.npz"
    if npz.is_file():
        return "npz", npz
    return None


def found_dir(hit: tuple[str, Path | tuple[Path, Path]]) -> Path:
    """The directory of what :func:`find_mnist` found."""
    return (hit[1] if hit[0] == "npz" else hit[1][0]).parent


def find_mnist(root: str | os.PathLike | None = None, split: Split = "train") -> tuple[str, Path | tuple[Path, Path]] | None:
    """Where the ``split`` files are: ``("idx", (images, labels))``, ``("npz", path)`` or ``None``.

    Looks in ``root``, ``$TORCHSTN_DATA`` and the user cache, each directory and its
    ``mnist/`` subdirectory, in that order; IDX files win over an ``mnist.npz`` in the
    same directory. A ``root`` that is a file (one of them, ``mnist.npz``) is refused with a
    ``ValueError`` that names its directory.
    """
    check_choice("split", split, SPLITS)
    if root is not None and Path(root).expanduser().is_file():  # (the download then failed on mkdir: FileExistsError)
        raise ValueError(f"root must be the directory that holds the MNIST files, got the file {root}; "
                         f"give its directory {Path(root).expanduser().parent}")
    for directory in _search_dirs(root):
        hit = _find_in(directory, split)
        if hit is not None:
            return hit
    return None


def _missing_message(root: str | os.PathLike | None, reason: str) -> str:
    names = ", ".join(f"{n}.gz" for n in MNIST_FILES)
    where = ", ".join(str(d) for d in _search_dirs(root))
    return (
        f"MNIST not found and not downloadable ({reason}). Put the four files {names} "
        f"(gzipped or not) or a Keras-style mnist.npz into {_download_target(root)} "
        f"(or point root= / --data-dir / TORCHSTN_DATA at the directory that holds them). Looked in: {where}"
    )


def download_mnist(
    target: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = _DOWNLOAD_TIMEOUT,
) -> Path:
    """Download the four gzipped IDX files into ``target``, each checked by SHA-256.

    Each file is streamed into a temporary file in ``target``, its decompressed content
    is checked against :data:`MNIST_FILES`, and only then is it renamed into place;
    files already present are kept. The first mirror that serves a file with the right
    checksum wins.

    Args:
        target: directory to write into (default: where :func:`load_mnist` would look
            first, see the module docstring).
        mirrors: base URLs to try, in order (default :data:`MIRRORS`).
        timeout: seconds to wait for each connection.

    Returns:
        The directory holding the four files.

    Raises:
        FileNotFoundError: no mirror could deliver a file with the right checksum; the
            message names the four files and where to put them.
    """
    target = Path(target).expanduser() if target is not None else _download_target(None)
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    target.mkdir(parents=True, exist_ok=True)
    for name, sha in MNIST_FILES.items():
        final = target / f"{name}.gz"
        if final.is_file():
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + f"/{name}.gz"
            try:
                _fetch_verified(url, final, sha, timeout)
                break
            except (OSError, ValueError, EOFError) as err:  # URLError is an OSError
                errors.append(f"{url}: {err}")
        else:
            raise FileNotFoundError(_missing_message(target, "; ".join(errors) or "no mirrors given"))
    return target


def _fetch_verified(url: str, final: Path, sha: str, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``final``; rename it once its content hash is right."""
    import urllib.request  # here: importing it costs time that ``import torchstn`` should not pay

    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        with gzip.open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha:
            raise ValueError(f"SHA-256 of the content is {digest}, expected {sha}")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: what a damaged gzip stream raises: a bad header or CRC (``BadGzipFile``, an ``OSError``),
#: a cut stream (``EOFError``) or garbage in the deflate data (``zlib.error``)
_GZIP_ERRORS = (EOFError, OSError, zlib.error)


def _corrupt(path: Path, what: str, err: BaseException) -> ValueError:
    """The one-line ``ValueError`` naming a file that cannot be decoded as ``what``."""
    reason = first_line(err)
    if len(reason) > 120:  # zipfile quotes whole headers
        reason = reason[:117] + "..."
    return ValueError(
        f"{path}: cannot be read as {what} ({reason}); the file is corrupt or truncated, "
        "delete it and fetch it again"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except _GZIP_ERRORS as err:
        raise _corrupt(path, "gzip" if path.suffix == ".gz" else "IDX", err) from err


def read_idx(path: str | os.PathLike, kind: Literal["images", "labels"], *, sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain): images ``(N, H, W)`` or labels ``(N,)``, uint8.

    Args:
        path: the file.
        kind: ``"images"`` (magic ``0x00000803``) or ``"labels"`` (``0x00000801``).
        sha256: if given, the expected SHA-256 of the decompressed bytes.

    Raises:
        ValueError: wrong magic number, a length that disagrees with the header, a bad
            gzip stream or a checksum mismatch; the message names the file.
    """
    check_choice("kind", kind, tuple(_MAGIC))
    path = Path(path)
    data = _read_bytes(path)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ValueError(
                f"{path}: SHA-256 of the content is {digest}, expected {sha256}: the file is corrupt "
                "or not the canonical MNIST (pass verify=False to read another MNIST-format data set)"
            )
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated, {len(data)} bytes is shorter than the {header}-byte IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[kind]:
        raise ValueError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{_MAGIC[kind]:08x} for an IDX {kind} file"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: wrong length, the header says {' x '.join(map(str, dims))} = {expected} bytes of "
            f"{kind} but the file holds {len(data) - header}; it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_bytes(array: np.ndarray, kind: str) -> bytes:
    """The IDX encoding of ``array`` (to checksum an ``.npz`` like the IDX files)."""
    header = _MAGIC[kind].to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _read_npz(path: Path, split: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` arrays of a Keras-style ``mnist.npz``, checked (``ValueError`` naming ``path``).

    A damaged ``.npz`` fails inside ``np.load`` in many ways: a bad archive or CRC
    (``BadZipFile``), garbage in the deflate data (``zlib.error``), a cut file
    (``EOFError``), a mangled ``.npy`` header (``ValueError``, ``tokenize.TokenError``),
    flag bits asking for encryption (``RuntimeError``) or an unknown method
    (``NotImplementedError``). The ``try`` holds nothing but the reading, so any error
    there means the file cannot be read.
    """
    keys = _NPZ_KEYS[split]
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if not missing:
                images, labels = (npz[k] for k in keys)
    except Exception as err:  # damage surfaces as many types, see _read_npz's docstring
        raise _corrupt(path, ".npz", err) from err
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; a Keras-style mnist.npz has {list(keys)}")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: {keys[0]} must be (N, H, W) and {keys[1]} (N,), got {images.shape} and {labels.shape}"
        )
    if images.dtype != np.uint8 or labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError(f"{path}: {keys[0]} must be uint8 and {keys[1]} in 0..255, got {images.dtype}")
    labels = labels.astype(np.uint8)
    if verify:
        prefix = _PREFIX[split]
        for array, kind in ((images, "images"), (labels, "labels")):
            sha = MNIST_FILES[f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"]
            digest = hashlib.sha256(_idx_bytes(array, kind)).hexdigest()
            if digest != sha:
                raise ValueError(
                    f"{path}: SHA-256 of {kind} is {digest}, expected {sha}: the file is corrupt or not the "
                    "canonical MNIST (pass verify=False to read another MNIST-format data set)"
                )
    return images, labels


def load_mnist(
    root: str | os.PathLike | None = None,
    split: Split = "train",
    *,
    download: bool = True,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split: images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)``.

    Args:
        root: directory holding the four IDX files (``.gz`` or plain) or ``mnist.npz``;
            ``None`` looks in ``$TORCHSTN_DATA`` and then the user cache.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        download: if nothing is found, download the four files from :data:`MIRRORS`.
        verify: check the content against the canonical SHA-256 (turn off to read
            another MNIST-format data set, e.g. Fashion-MNIST, from the same layout).

    Returns:
        ``(images, labels)``: ``(N, H, W)`` uint8 (``H = W = 28`` for MNIST) and ``(N,)``
        int64, fresh tensors the caller may modify.

    Raises:
        FileNotFoundError: nothing found and the download failed or was disabled; the
            message names the four files and where to put them.
        ValueError: a file is corrupt, truncated or has the wrong magic number, or
            its checksum disagrees; ``root`` is a file, not the directory holding them.

    Example:
        >>> images, labels = stn.data.load_mnist(split="test")  # doctest: +SKIP
        >>> images.shape, images.dtype, labels.dtype  # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.uint8, torch.int64)
    """
    check_choice("split", split, SPLITS)
    check_path("root", root)
    check_bool("download", download)  # ("False" from a config file is not True)
    check_bool("verify", verify)
    kind, where = _locate(root, split, download)
    if kind == "npz":
        images, labels = _read_npz(where, split, verify)
    else:
        images, labels = _read_idx_pair(*where, split, verify)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _locate(root: str | os.PathLike | None, split: str, download: bool) -> tuple[str, Path | tuple[Path, Path]]:
    """Where the ``split`` files are (see :func:`find_mnist`), downloaded first if none are found and
    ``download``. A ``root`` given but not holding them (a mistyped ``--data-dir``) is said in a
    warning when the files are read from further down the search order."""
    hit = find_mnist(root, split)
    if hit is not None:
        warn_if_not_in_root(root, found_dir(hit), "mnist", "MNIST")
    else:
        if not download:
            raise FileNotFoundError(_missing_message(root, "download=False"))
        download_mnist(_download_target(root))
        hit = find_mnist(root, split)
        if hit is None:  # pragma: no cover - download_mnist raises first
            raise FileNotFoundError(_missing_message(root, "the download left no files"))
    return hit


def _read_idx_pair(image_path: Path, label_path: Path, split: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of an IDX pair, checked (``ValueError`` naming the file)."""
    image_name, label_name = _file_names(split)
    images = read_idx(image_path, "images", sha256=MNIST_FILES[image_name] if verify else None)
    labels = read_idx(label_path, "labels", sha256=MNIST_FILES[label_name] if verify else None)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels")
    return images, labels
