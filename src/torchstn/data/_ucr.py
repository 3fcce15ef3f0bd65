r"""UCR time series: the archive's ``.tsv`` files and the ``.ts`` format, as float tensors.

Two file formats hold the same data sets:

* **UCR 2018 archive** (``<Name>/<Name>_TRAIN.tsv``, ``_TEST.tsv``): one series a line,
  the class label first, then the values, tab separated; a series shorter than the
  longest is padded with ``NaN`` at its end; an empty field is a missing value. Commas
  and spaces are accepted as separators too, and the 2015 archive's files
  (``<Name>_TRAIN``, comma separated, without an extension, or ``.txt``) are read alike.
* **``.ts``** (timeseriesclassification.com, sktime, aeon): a header of ``@key value``
  lines (``@problemName``, ``@univariate``, ``@dimensions``, ``@equalLength``,
  ``@seriesLength``, ``@classLabel true <labels>``, ...) closed by ``@data``, then one
  series a line: comma-separated values, one ``:``-separated field per dimension, the
  class label last (``1.0,2.5,?,3.1:label``); ``?`` is a missing value. Comment lines
  start with ``#`` (or ``%``).

Where the files are looked for, in order: ``root``, ``$TORCHSTN_DATA`` and the user cache
``$TORCHSTN_CACHE/ucr`` (each directory, its ``ucr/`` and its ``UCRArchive_2018/``
subdirectories), then the data sets that the ``aeon`` package ships inside its wheel
(``aeon/datasets/data/<Name>/``, located with :func:`importlib.util.find_spec`, without
importing aeon: ``pip install --no-deps aeon`` is enough). ``.ts`` is read before ``.tsv``
where a folder holds both.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from torchstn._validation import check_bool, check_choice, check_int
from torchstn.data._mnist import SPLITS, search_dirs, warn_if_not_in_root

__all__ = [
    "UCR_OPTIONS", "UCR_PADDINGS", "UCR_URL", "UCRSplit", "check_ucr_options", "load_ucr", "shipped_ucr_dir",
    "ucr_datasets",
]

#: where the UCR 2018 archive (the ``.tsv`` files) is published
UCR_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"
#: where the ``.ts`` versions are published
TS_URL = "https://timeseriesclassification.com/"
#: how series shorter than the longest are brought to one length (see :func:`load_ucr`)
UCR_PADDINGS: tuple[str, ...] = ("edge", "nan", "resample")
#: the package whose wheel ships UCR data sets, and their folder inside it
SHIPPED_PACKAGE = "aeon"
_SHIPPED_SUBDIR = ("datasets", "data")
_SPLIT_SUFFIX = {"train": "TRAIN", "test": "TEST"}
_EXTENSIONS = (".ts", ".tsv", ".txt", "")  # (the last two: the 2015 archive's files)

Padding = Literal["edge", "nan", "resample"]
Label = int | float | str


class UCRSplit(tuple):
    """What :func:`load_ucr` returns: the pair ``(x, y)`` with the rest as attributes.

    Unpacks as ``x, y = load_ucr(...)``.

    Attributes:
        x: ``(N, D, L)`` float32 series (``D = 1`` for the univariate archive).
        y: ``(N,)`` int64 labels in ``0..C-1``.
        classes: the original label of each class index: ``classes[y[i]]`` is the label
            written in the file. Where every label is a number, each is an ``int`` if it is
            a whole number and a ``float`` otherwise (labels ``1`` and ``2.5`` give
            ``(1, 2.5)``); else every label is the ``str``.
        lengths: ``(N,)`` int64 length of each series before padding (``L`` for all of an
            equal-length set).
        name, split: as requested.
        path: the file read.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[Label, ...]
    lengths: torch.Tensor
    name: str
    split: str
    path: Path

    def __new__(
        cls, x: torch.Tensor, y: torch.Tensor, classes: tuple[Label, ...], lengths: torch.Tensor,
        name: str, split: str, path: Path,
    ) -> UCRSplit:
        self = super().__new__(cls, (x, y))
        self.x, self.y, self.classes, self.lengths = x, y, classes, lengths
        self.name, self.split, self.path = name, split, path
        return self

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return UCRSplit, (self.x, self.y, self.classes, self.lengths, self.name, self.split, self.path)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"UCRSplit(name={self.name!r}, split={self.split!r}, x={tuple(self.x.shape)}, "
                f"classes={self.classes!r}, path={str(self.path)!r})")


class _Parsed:
    """The content of one file: per-series ``(D, L_i)`` float64 arrays, their labels, and the
    classes its header declares (``None`` for ``.tsv``)."""

    def __init__(self, series: list[np.ndarray], labels: list[str], declared: list[str] | None) -> None:
        self.series, self.labels, self.declared = series, labels, declared


def _floats(path: Path, number: int, tokens: Sequence[str]) -> np.ndarray:
    """``tokens`` as float64 (``?``, ``NaN`` and empty fields are missing); a ``ValueError``
    naming the line otherwise."""
    try:
        return np.array(["nan" if t.strip() in ("?", "") else t for t in tokens], dtype=np.float64)
    except ValueError:
        for t in tokens:
            try:
                float("nan" if t.strip() in ("?", "") else t)
            except ValueError:
                raise ValueError(f"{path}:{number}: {t.strip()!r} is not a number") from None
        raise  # pragma: no cover - numpy and float() agree on what a number is


def _trim(path: Path, number: int, values: np.ndarray) -> np.ndarray:
    """Drop the ``NaN`` padding at the end of a series (the archive's variable lengths)."""
    present = np.flatnonzero(~np.isnan(values).all(0))
    if len(present) == 0:
        raise ValueError(f"{path}:{number}: the series has no values (all missing)")
    return values[:, : present[-1] + 1]


def _fields(line: str) -> list[str]:
    """A ``.tsv`` line's fields: split at tabs, else at commas, else at spaces; an empty field
    between two separators is kept (a missing value), the line's own end is not a field."""
    text = line.rstrip("\r\n")
    for separator in ("\t", ","):
        if separator in text:
            fields = [f.strip() for f in text.split(separator)]
            while fields and not fields[-1]:  # (a separator ending the line)
                fields.pop()
            return fields
    return text.split()


def _read_tsv(path: Path) -> _Parsed:
    series, labels = [], []
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            fields = _fields(line)
            if not any(fields):
                continue
            if len(fields) < 2 or not fields[0]:
                raise ValueError(f"{path}:{number}: a line must hold a label and at least one value, got {line.strip()!r}")
            labels.append(fields[0])
            series.append(_trim(path, number, _floats(path, number, fields[1:])[None]))
    if not series:
        raise ValueError(f"{path}: holds no series")
    return _Parsed(series, labels, None)


def _header_flag(path: Path, header: dict[str, str], key: str) -> bool | None:
    value = header.get(key)
    if value is None:
        return None
    word = value.split()[0].lower() if value.split() else ""
    if word not in ("true", "false"):
        raise ValueError(f"{path}: @{key} must be true or false, got {value!r}")
    return word == "true"


def _open_text(path: Path) -> Any:
    """``path`` opened as UTF-8 text, a byte-order mark dropped (Windows editors write one)."""
    return open(path, encoding="utf-8-sig")


def _read_ts(path: Path) -> _Parsed:
    header: dict[str, str] = {}
    series, labels = [], []
    dims: int | None = None
    length: int | None = None
    declared: list[str] = []
    in_data = False
    with _open_text(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in "#%":
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise ValueError(f"{path}:{number}: expected a @key line or @data before the series, got {line[:40]!r}")
                key, _, rest = line[1:].replace("\t", " ").partition(" ")
                if key.lower() == "data":
                    in_data = True
                    dims, length, declared = _check_header(path, header)
                else:
                    header[key.lower()] = rest.strip()
                continue
            *fields, label = line.split(":")
            if not fields:
                raise ValueError(f"{path}:{number}: a series line must end in ':<label>', got {line[:40]!r}...")
            if dims is not None and len(fields) != dims:
                raise ValueError(f"{path}:{number}: {len(fields)} dimension(s), the header says {dims}")
            parts = [_floats(path, number, field.split(",")) for field in fields]
            if len({len(p) for p in parts}) != 1:
                raise ValueError(f"{path}:{number}: the dimensions have different lengths {[len(p) for p in parts]}")
            values = np.stack(parts)  # (a '?' at the end is a missing value: .ts pads nothing)
            if np.isnan(values).all():
                raise ValueError(f"{path}:{number}: the series has no values (all missing)")
            if length is not None and values.shape[1] != length:
                raise ValueError(f"{path}:{number}: {values.shape[1]} values, the header says @seriesLength {length}")
            label = label.strip()
            if label not in declared:
                raise ValueError(f"{path}:{number}: label {label!r} is not among the declared @classLabel {declared}")
            dims = len(fields)
            series.append(values)
            labels.append(label)
    if not in_data:
        raise ValueError(f"{path}: no @data line: not a .ts file")
    if not series:
        raise ValueError(f"{path}: holds no series after @data")
    return _Parsed(series, labels, declared)


def _check_header(path: Path, header: dict[str, str]) -> tuple[int | None, int | None, list[str]]:
    """``(dimensions, series length, declared classes)`` from a ``.ts`` header; what is not
    supported raises ``ValueError`` naming the file."""
    if _header_flag(path, header, "timestamps"):
        raise ValueError(f"{path}: series with time stamps (@timeStamps true) are not supported")
    if "targetlabel" in header or not _header_flag(path, header, "classlabel"):
        raise ValueError(
            f"{path}: not a classification problem (it needs '@classLabel true <labels>'; "
            "regression sets with @targetLabel are not supported)"
        )
    declared = header["classlabel"].split()[1:]
    if not declared:
        raise ValueError(f"{path}: @classLabel true lists no labels")
    def whole(key: str) -> int:
        try:
            return int(header[key])
        except ValueError:
            raise ValueError(f"{path}: @{key} must be a whole number, got {header[key]!r}") from None

    dims = whole("dimensions") if "dimensions" in header else (1 if _header_flag(path, header, "univariate") else None)
    equal = _header_flag(path, header, "equallength")
    length = whole("serieslength") if equal and "serieslength" in header else None
    return dims, length, declared


def _read(path: Path) -> _Parsed:
    try:
        return _read_ts(path) if path.suffix == ".ts" else _read_tsv(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _canonical(labels: Sequence[str]) -> tuple[list[Label], dict[str, int]]:
    """The sorted classes and the class index of each label string.

    Labels that all parse as numbers are compared as numbers (``"2" < "10"``, and ``"1"``
    and ``"1.0"`` are one class), else as strings.
    """
    unique = sorted(set(labels))
    try:
        values: list[Label] = [float(u) for u in unique]
    except ValueError:
        values = list(unique)
    else:
        values = [int(v) if float(v).is_integer() else v for v in values]
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return classes, {u: index[v] for u, v in zip(unique, values)}


def _znormalise(values: np.ndarray) -> np.ndarray:
    """Each dimension to mean 0 and sample standard deviation 1 over its present values; a
    constant one to zeros (its mean may be off by a rounding, and its spread then not 0: it
    is told by its values, all equal); one with no values stays NaN."""
    with warnings.catch_warnings():  # (a dimension with no values: numpy's empty-slice warnings)
        warnings.simplefilter("ignore", RuntimeWarning)
        count = (~np.isnan(values)).sum(1, keepdims=True)
        mean = np.nanmean(values, 1, keepdims=True)
        var = np.nansum((values - mean) ** 2, 1, keepdims=True) / np.maximum(count - 1, 1)
        constant = ~(np.nanmax(values, 1, keepdims=True) > np.nanmin(values, 1, keepdims=True))
    out = (values - mean) / np.where(constant, 1.0, np.sqrt(var))
    return np.where(constant & ~np.isnan(values), 0.0, out)


def _to_length(values: np.ndarray, length: int, pad: str) -> np.ndarray:
    """One ``(D, L_i)`` series brought to ``length`` as ``pad`` says."""
    d, n = values.shape
    if n == length:
        return values
    if pad == "resample":
        t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        s = np.linspace(0.0, 1.0, length)
        return np.stack([np.interp(s, t, v) for v in values])
    fill = np.full((d, length - n), np.nan) if pad == "nan" else np.repeat(values[:, -1:], length - n, 1)
    return np.concatenate([values, fill], 1)


# ------------------------------------------------------------------------------------------------
def shipped_ucr_dir() -> Path | None:
    """The folder of UCR data sets inside the installed ``aeon`` package, or ``None``.

    Found with :func:`importlib.util.find_spec`, which locates the package without
    importing it (aeon's import is slow and pulls scikit-learn and numba), so the data is
    usable after ``pip install --no-deps aeon``.
    """
    try:
        spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location).joinpath(*_SHIPPED_SUBDIR)
        if folder.is_dir():
            return folder
    return None


#: the folder the UCR 2018 archive extracts to
_ARCHIVE_FOLDER = "UCRArchive_2018"


def _places(root: str | os.PathLike | None) -> list[Path]:
    """Folders that may hold ``<Name>/`` folders (or the files themselves), in search order."""
    places: list[Path] = []
    for d in search_dirs(root, "ucr"):
        for p in (d, d / _ARCHIVE_FOLDER):
            if p not in places:
                places.append(p)
    shipped = shipped_ucr_dir()
    if shipped is not None:
        places.append(shipped)
    return places


def _child(folder: Path, name: str, want_dir: bool) -> Path | None:
    """``folder / name``, matched without regard to case; ``None`` if absent."""
    exact = folder / name
    if exact.is_dir() if want_dir else exact.is_file():
        return exact
    try:
        children = list(folder.iterdir())
    except OSError:
        return None
    for child in children:
        if child.name.lower() == name.lower() and (child.is_dir() if want_dir else child.is_file()):
            return child
    return None


def _split_file(folder: Path, name: str, split: str) -> Path | None:
    for ext in _EXTENSIONS:
        hit = _child(folder, f"{name}_{_SPLIT_SUFFIX[split]}{ext}", want_dir=False)
        if hit is not None:
            return hit
    return None


def _locate(name: str, split: str, root: str | os.PathLike | None) -> Path:
    """The file of ``split`` of ``name``: the first of the places (see the module docstring) that holds it."""
    for place in _places(root):
        for folder in (_child(place, name, want_dir=True), place):
            if folder is not None and (hit := _split_file(folder, name, split)) is not None:
                # the search directory the place came from (a place is one, or its archive folder)
                base = place.parent if place.name == _ARCHIVE_FOLDER else place
                warn_if_not_in_root(root, base, "ucr", f"UCR {name}", read=hit)
                return hit
    raise FileNotFoundError(_missing_message(name, root))


def _missing_message(name: str, root: str | os.PathLike | None) -> str:
    target = search_dirs(root, "ucr")[0]  # root, else $TORCHSTN_DATA, else the cache's ucr/
    shipped = shipped_ucr_dir()
    offline = (
        f"the data sets aeon ships are in {shipped}: {', '.join(ucr_datasets(shipped_only=True))}"
        if shipped is not None
        else "`pip install --no-deps aeon` ships GunPoint, ArrowHead, OSULeaf, ItalyPowerDemand, "
        "PickupGestureWiimoteZ, ACSF1 and a few more, found without further setup"
    )
    return (
        f"UCR data set {name!r} not found. Put {name}_TRAIN.tsv and {name}_TEST.tsv (the UCR 2018 archive, "
        f"{UCR_URL}) or {name}_TRAIN.ts and {name}_TEST.ts ({TS_URL}) into {target / name}/ "
        f"(or point root= / --data-dir / TORCHSTN_DATA at the folder holding {name}/). "
        f"Looked in: {', '.join(str(p) for p in _places(root))}. Offline, {offline}."
    )


def ucr_datasets(root: str | os.PathLike | None = None, *, shipped_only: bool = False) -> list[str]:
    """Names of the UCR classification data sets found (see the module docstring for where).

    A folder ``<Name>/`` counts when it holds ``<Name>_TRAIN.ts`` or ``.tsv``; ``.ts``
    sets whose header is not a classification problem (aeon's regression sets) are left
    out.

    Args:
        root: a folder searched first (see :func:`load_ucr`).
        shipped_only: only the sets of the ``aeon`` package (none if it is not installed).

    Returns:
        Sorted names, each once.
    """
    places = _places(root)
    if shipped_only:
        shipped = shipped_ucr_dir()
        places = [shipped] if shipped is not None else []
    names: set[str] = set()
    for place in places:
        try:
            children = sorted(place.iterdir())
        except OSError:
            continue
        for child in children:
            hit = _split_file(child, child.name, "train") if child.is_dir() else None
            if hit is not None and (hit.suffix != ".ts" or _is_classification(hit)):
                names.add(child.name)
    return sorted(names)


def _is_classification(path: Path) -> bool:
    """Whether a ``.ts`` header says ``@classLabel true`` (reads the header only)."""
    header: dict[str, str] = {}
    try:
        with _open_text(path) as f:
            for raw in f:
                line = raw.strip()
                if line.lower().startswith("@data"):
                    break
                if line.startswith("@"):
                    key, _, rest = line[1:].replace("\t", " ").partition(" ")
                    header[key.lower()] = rest.strip()
        _check_header(path, header)
    except (ValueError, UnicodeDecodeError):  # (not a classification set, or not text: not listed)
        return False
    return True


#: the options of :func:`load_ucr` that a ``ucr:`` dataset takes (:func:`check_ucr_options` checks them)
UCR_OPTIONS = ("znormalize", "pad", "length")


def check_ucr_options(*, znormalize: bool = True, pad: Padding = "edge", length: int | None = None) -> None:
    """Check :func:`load_ucr`'s options (``TypeError`` / ``ValueError`` naming the option); loads nothing."""
    check_bool("znormalize", znormalize)
    check_choice("pad", pad, UCR_PADDINGS)
    if length is not None:
        check_int("length", length, 1)


def load_ucr(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    znormalize: bool = True,
    pad: Padding = "edge",
    length: int | None = None,
) -> UCRSplit:
    r"""Load a split of a UCR time-series classification data set.

    Normalisation: each series (each dimension of it) is z-normalised over its present
    values, :math:`x \leftarrow (x - \bar x) / s` with the sample standard deviation
    :math:`s` (``n - 1`` in the denominator, as MATLAB's ``zscore`` that normalised the
    archive: on the archive's classic sets this changes nothing but rounding; some 2018
    additions were normalised with ``n`` or not at all). A constant series becomes zeros.
    ``znormalize=False`` returns the values as stored.

    Labels are mapped to ``0..C-1`` in the sorted order of the original labels (numbers
    compared as numbers); ``result.classes`` gives the original label of each index.
    The classes are those both splits' ``.ts`` headers declare, or for ``.tsv`` the labels
    of both splits' files (of this split alone where the other file is absent), so train
    and test share one mapping.

    Variable lengths (the archive pads them with ``NaN``; ``.ts`` lines simply differ):
    the series are normalised at their own length, then brought to one length, the
    longest of both splits (so train and test fit one model) or ``length``, with ``pad``:
    ``"edge"`` repeats each series' last value, ``"nan"`` pads with ``NaN`` as the
    ``.tsv`` files do, ``"resample"`` stretches each series to the common length by
    linear interpolation (both ends kept). ``result.lengths`` keeps the original lengths.
    Missing values inside a series stay ``NaN``.

    Args:
        name: the data set's name, e.g. ``"GunPoint"`` (its folder is matched without regard to case).
        split: ``"train"`` or ``"test"``.
        root: a folder holding ``<Name>/`` (or the files themselves); ``None`` looks in
            ``$TORCHSTN_DATA``, the user cache and the sets aeon ships (see the module docstring).
        znormalize: z-normalise each series (see above).
        pad: ``"edge"``, ``"nan"`` or ``"resample"`` (see above).
        length: the common length (default: the longest series of both splits); with
            ``"edge"`` or ``"nan"`` it must be at least the longest series of the split.

    Returns:
        A :class:`UCRSplit`, unpacking as ``(x, y)``: ``x`` float32 ``(N, D, L)`` (``D = 1``
        for univariate sets), ``y`` int64 ``(N,)``; with ``classes``, ``lengths`` and ``path``.

    Raises:
        FileNotFoundError: the split's file is nowhere; the message names the files,
            where to put them and where they are published.
        ValueError: a malformed file (the message names the file and line), a label the
            header does not declare, or an unsupported ``.ts`` (time stamps, regression).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "Tiny"
        >>> folder.mkdir()
        >>> _ = (folder / "Tiny_TRAIN.tsv").write_text("2\t1\t2\t3\n-1\t4\t4\tNaN\n")
        >>> x, y = stn.data.load_ucr("Tiny", "train", root=folder.parent)
        >>> x.shape, y.tolist(), stn.data.load_ucr("Tiny", root=folder.parent).classes
        (torch.Size([2, 1, 3]), [1, 0], (-1, 2))
        >>> x[0, 0].tolist(), x[1, 0].tolist()  # z-normalised; the short series padded by its edge
        ([-1.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    """
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        raise ValueError(f"name must be a data set's folder name such as 'GunPoint', got {name!r}")
    check_choice("split", split, SPLITS)
    check_ucr_options(znormalize=znormalize, pad=pad, length=length)
    path = _locate(name, split, root)
    parsed = _read(path)
    other_path = _split_file(path.parent, name, "test" if split == "train" else "train")
    other = None if other_path is None else _read(other_path)
    # the classes of both splits: the .ts headers' (sktime writes a split's own labels there), the .tsv labels
    declared = list(parsed.labels if parsed.declared is None else parsed.declared)
    if other is not None:
        declared += other.labels if other.declared is None else other.declared
    classes, index = _canonical(declared)
    dims = {s.shape[0] for s in parsed.series}
    if len(dims) != 1:
        raise ValueError(f"{path}: the series have different numbers of dimensions {sorted(dims)}")
    lengths = [s.shape[1] for s in parsed.series]
    longest = max(lengths + ([] if other is None else [s.shape[1] for s in other.series]))
    if length is not None:
        if pad != "resample" and max(lengths) > length:
            raise ValueError(
                f"length={length} is shorter than the longest series of {name} {split} ({max(lengths)}); "
                "pass a larger length, or pad='resample' to shrink the longer series"
            )
        longest = length
    series = [_znormalise(s) if znormalize else s for s in parsed.series]
    x = np.stack([_to_length(s, longest, pad) for s in series]).astype(np.float32)
    y = torch.tensor([index[label] for label in parsed.labels], dtype=torch.int64)
    return UCRSplit(torch.from_numpy(x), y, tuple(classes), torch.tensor(lengths, dtype=torch.int64),
                    path.parent.name if path.parent.name.lower() == name.lower() else name, split, path)
