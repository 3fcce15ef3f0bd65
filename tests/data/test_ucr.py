"""UCR time series: the .tsv and .ts readers on tiny files of the real formats, and the sets aeon ships."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import torchstn as stn
from torchstn.data import _ucr, get_dataset, load_ucr, shipped_ucr_dir, ucr_datasets

SHIPPED = shipped_ucr_dir()
needs_aeon = pytest.mark.skipif(SHIPPED is None, reason="aeon is not installed (pip install --no-deps aeon ships the UCR sets)")


def _zscore(values: list[float]) -> np.ndarray:
    """The reference: mean 0, sample standard deviation 1 (MATLAB's zscore)."""
    v = np.asarray(values, dtype=np.float64)
    return (v - v.mean()) / v.std(ddof=1)


def _write(folder: Path, name: str, split: str, text: str, ext: str = ".tsv") -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / name / f"{name}_{split.upper()}{ext}"
    path.write_text(text)
    return path


# --- the UCR 2018 .tsv format ---------------------------------------------------------------------


@pytest.fixture
def tsv_root(tmp_path) -> Path:
    """A variable-length set: labels 10, 2, -1 (sorted as numbers), NaN-padded rows."""
    _write(tmp_path, "Tiny", "train",
           "10\t1.0\t2.0\t4.0\t8.0\n2\t3.0\t1.0\tNaN\tNaN\n-1\t0.5\t0.5\t0.5\t0.5\n2\t1\t2\t3\tNaN\n")
    _write(tmp_path, "Tiny", "test", "2\t5\t6\t7\t8\t9\n-1\t1\t0\t1\tNaN\tNaN\n")
    return tmp_path


def test_tsv_labels_are_sorted_numbers_and_series_are_znormalised(tsv_root):
    data = load_ucr("Tiny", "train", root=tsv_root)
    x, y = data  # unpacks as a pair
    # the test split's longest series (5) sets the common length
    assert x.dtype == torch.float32 and x.shape == (4, 1, 5)
    assert data.classes == (-1, 2, 10) and y.tolist() == [2, 1, 0, 1] and y.dtype == torch.int64
    assert data.lengths.tolist() == [4, 2, 4, 3] and data.path.name == "Tiny_TRAIN.tsv"
    np.testing.assert_allclose(x[0, 0, :4].numpy(), _zscore([1, 2, 4, 8]), rtol=1e-6)
    np.testing.assert_allclose(x[1, 0, :2].numpy(), _zscore([3, 1]), rtol=1e-6)
    assert x[2].abs().max() == 0  # a constant series becomes zeros, not NaN
    # "edge": each series continues with its last value
    assert (x[0, 0, 4] == x[0, 0, 3]) and (x[1, 0, 2:] == x[1, 0, 1]).all()


def test_a_root_without_the_set_is_said_when_another_copy_is_read(tsv_root, tmp_path, monkeypatch):
    """A mistyped root (--data-dir) is not silently replaced by the copy further down the search order."""
    monkeypatch.setenv("TORCHSTN_DATA", str(tsv_root))
    with pytest.warns(UserWarning, match="UCR Tiny is not in .*typo.*reading the copy in"):
        x, _ = load_ucr("Tiny", "train", root=tmp_path / "typo")
    assert x.shape == (4, 1, 5)
    with pytest.warns(UserWarning, match="UCR Tiny is not in"):  # a root holding the other copy deeper down
        load_ucr("Tiny", "train", root=tsv_root.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ucr("Tiny", "train", root=tsv_root)  # found where it was asked for: nothing to say
        load_ucr("Tiny", "train")  # no root asked for: the search order is the contract


def test_both_splits_share_one_label_map_and_length(tsv_root):
    train, test = (load_ucr("Tiny", s, root=tsv_root) for s in ("train", "test"))
    assert train.classes == test.classes
    assert test.y.tolist() == [1, 0]  # labels 2 and -1, indexed as in train
    assert train.x.shape[2] == test.x.shape[2] == 5


def test_paddings(tsv_root):
    nan = load_ucr("Tiny", "train", root=tsv_root, pad="nan")
    assert torch.isnan(nan.x[1, 0, 2:]).all() and not torch.isnan(nan.x[1, 0, :2]).any()
    resampled = load_ucr("Tiny", "train", root=tsv_root, pad="resample")
    # the series 1, 2, 3 is a line: stretched to 5 samples it stays one, ends kept
    np.testing.assert_allclose(resampled.x[3, 0].numpy(), np.linspace(-1.0, 1.0, 5), atol=1e-6)
    longer = load_ucr("Tiny", "train", root=tsv_root, length=7)
    assert longer.x.shape == (4, 1, 7) and (longer.x[0, 0, 3:] == longer.x[0, 0, 3]).all()
    with pytest.raises(ValueError, match="length=3 is shorter than the longest series"):
        load_ucr("Tiny", "train", root=tsv_root, length=3)
    with pytest.raises(ValueError, match="pad must be one of"):
        load_ucr("Tiny", "train", root=tsv_root, pad="zeros")


def test_znormalize_off_returns_the_stored_values(tsv_root):
    x = load_ucr("Tiny", "train", root=tsv_root, znormalize=False, pad="nan").x
    assert x[0, 0, :4].tolist() == [1.0, 2.0, 4.0, 8.0] and torch.isnan(x[0, 0, 4])
    assert x[1, 0, :2].tolist() == [3.0, 1.0]


def test_found_by_folder_case_by_files_in_root_and_through_torchstn_data(tsv_root, tmp_path, monkeypatch):
    assert load_ucr("tiny", "test", root=tsv_root).name == "Tiny"
    assert load_ucr("Tiny", "test", root=tsv_root / "Tiny").x.shape == (2, 1, 5)
    monkeypatch.setenv("TORCHSTN_DATA", str(tsv_root))
    assert load_ucr("Tiny", "test").path == tsv_root / "Tiny" / "Tiny_TEST.tsv"
    assert "Tiny" in ucr_datasets()
    assert "ucr:Tiny" in stn.data.list_datasets()


def test_missing_files_say_which_where_and_from_where(tmp_path, monkeypatch):
    monkeypatch.setattr(_ucr, "shipped_ucr_dir", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        load_ucr("NoSuchSet", "train", root=tmp_path)
    message = str(err.value)
    for part in ("NoSuchSet_TRAIN.tsv", "NoSuchSet_TEST.tsv", "NoSuchSet_TRAIN.ts", str(tmp_path / "NoSuchSet"),
                 _ucr.UCR_URL, "pip install --no-deps aeon"):
        assert part in message
    with pytest.raises(ValueError, match="folder name"):
        load_ucr("../etc", "train", root=tmp_path)


# --- the .ts format ---------------------------------------------------------------------------------

TS_HEADER = """# a comment line
% and an ARFF-style one
@problemName Shapes
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true circle square triangle
@data
"""


@pytest.fixture
def ts_root(tmp_path) -> Path:
    _write(tmp_path, "Shapes", "train",
           TS_HEADER + "1,2,3,4:0,0,1,1:square\n5,?,7:1,2,3:circle\n\n2,4,6,8,10:1,1,1,1,2:square\n", ".ts")
    _write(tmp_path, "Shapes", "test", TS_HEADER + "1,2:3,4:triangle\n", ".ts")
    return tmp_path


def test_ts_multivariate_missing_values_and_declared_classes(ts_root):
    data = load_ucr("Shapes", "train", root=ts_root, pad="nan")
    assert data.x.shape == (3, 2, 5)
    assert data.classes == ("circle", "square", "triangle")  # declared, sorted; triangle only in test
    assert data.y.tolist() == [1, 0, 1] and data.lengths.tolist() == [4, 3, 5]
    np.testing.assert_allclose(data.x[0, 0, :4].numpy(), _zscore([1, 2, 3, 4]), rtol=1e-6)
    np.testing.assert_allclose(data.x[0, 1, :4].numpy(), _zscore([0, 0, 1, 1]), rtol=1e-6)
    # a missing value inside a series stays NaN; the statistics skip it
    assert torch.isnan(data.x[1, 0, 1]) and torch.isnan(data.x[1, 0, 3:]).all()
    np.testing.assert_allclose(data.x[1, 0, [0, 2]].numpy(), _zscore([5, 7]), rtol=1e-6)
    assert load_ucr("Shapes", "test", root=ts_root).y.tolist() == [2]


def test_ts_read_before_tsv_in_one_folder(ts_root):
    _write(ts_root, "Shapes", "train", "9\t1\t2\n", ".tsv")
    assert load_ucr("Shapes", "train", root=ts_root).path.suffix == ".ts"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("@problemName X\n@classLabel true 1 2\n@data\n1,2,zwei:1\n", r"X_TRAIN\.ts:4: 'zwei' is not a number"),
        ("@classLabel true 1 2\n@data\n1,2,3:3\n", r":3: label '3' is not among the declared"),
        ("@dimensions 2\n@classLabel true 1\n@data\n1,2,3:1\n", r":4: 1 dimension\(s\), the header says 2"),
        ("@equalLength true\n@seriesLength 4\n@classLabel true 1\n@data\n1,2,3:1\n", r"3 values, the header says @seriesLength 4"),
        ("@classLabel true 1\n@data\n1,2:1,2,3:1\n", r"the dimensions have different lengths"),
        ("@classLabel true 1\n1,2,3:1\n", r"expected a @key line or @data"),
        ("@classLabel true 1\n", r"no @data line"),
        ("@classLabel true 1\n@data\n", r"holds no series"),
        ("@classLabel true 1\n@data\n?,?:1\n", r"all missing"),
        ("@targetLabel true\n@data\n1,2,3:0.5\n", r"not a classification problem"),
        ("@classLabel false\n@data\n1,2,3\n", r"not a classification problem"),
        ("@timeStamps true\n@classLabel true 1\n@data\n(2020-01-01,1.0):1\n", r"time stamps"),
        ("@classLabel true 1\n@univariate maybe\n@data\n1:1\n", r"@univariate must be true or false"),
    ],
)
def test_malformed_ts_files_raise_naming_file_and_line(tmp_path, text, match):
    _write(tmp_path, "X", "train", text, ".ts")
    with pytest.raises(ValueError, match=match):
        load_ucr("X", "train", root=tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("1\t0.5\t1e\n", r"X_TRAIN\.tsv:1: '1e' is not a number"), ("1\n", r":1: a line must hold a label and at least one"),
     ("", r"holds no series"), ("1\tNaN\tNaN\n", r"all missing")],
)
def test_malformed_tsv_files_raise_naming_file_and_line(tmp_path, text, match):
    _write(tmp_path, "X", "train", text)
    with pytest.raises(ValueError, match=match):
        load_ucr("X", "train", root=tmp_path)


def test_a_constant_series_becomes_exact_zeros(tmp_path):
    """A constant series whose mean was off by one rounding (0.1 seven times) had a spread of
    1e-17, which passed the std > 0 test and was divided up to +-0.93."""
    _write(tmp_path, "C", "train", "1\t0.1\t0.1\t0.1\t0.1\t0.1\t0.1\t0.1\n2\t0.7\t0.7\t0.7\tNaN\n3\t1\t2\t3\t4\n")
    x = load_ucr("C", "train", root=tmp_path, pad="nan").x
    assert x[0, 0].tolist() == [0.0] * 7 and x[1, 0, :3].tolist() == [0.0] * 3 and x[1, 0, 3:].isnan().all()
    torch.testing.assert_close(x[2, 0, :4], torch.from_numpy(_zscore([1, 2, 3, 4])).float())


@pytest.mark.parametrize("separator", ["\t", ","])
def test_an_empty_field_is_a_missing_value_in_its_place(tmp_path, separator):
    """An empty field (pandas writes NaN so) was dropped, and every later value moved one place left."""
    _write(tmp_path, "E", "train", separator.join(["1", "1", "", "3", "4"]) + "\n" + separator.join("25678") + "\n")
    x = load_ucr("E", "train", root=tmp_path, znormalize=False, pad="nan").x
    assert x[0, 0, 0] == 1 and x[0, 0, 1].isnan() and x[0, 0, 2:].tolist() == [3, 4]
    assert x[1, 0].tolist() == [5, 6, 7, 8]


def test_ts_splits_share_one_label_map_where_their_headers_differ(tmp_path):
    """Each .ts split was mapped by its own @classLabel: sktime writes a split's own labels there,
    so a test file declaring 'a c' mapped c to 1 where training had 2."""
    head = "@problemName H\n@univariate true\n@classLabel true "
    _write(tmp_path, "H", "train", head + "a b c\n@data\n1,2,3:a\n3,2,1:b\n1,3,2:c\n", ".ts")
    _write(tmp_path, "H", "test", head + "a c\n@data\n1,3,2:c\n", ".ts")
    train, test = load_ucr("H", "train", root=tmp_path), load_ucr("H", "test", root=tmp_path)
    assert train.classes == test.classes == ("a", "b", "c")
    assert train.y.tolist() == [0, 1, 2] and test.y.tolist() == [2]


def test_a_missing_value_at_the_end_of_a_ts_series_stays_in_its_place(tmp_path):
    """A trailing '?' was taken for the .tsv format's padding: an error against @seriesLength, or
    (unequal lengths) the series one value shorter, its missing value then padded by the edge."""
    _write(tmp_path, "Q", "train", "@equalLength true\n@seriesLength 4\n@classLabel true 1 2\n@data\n"
           "1,2,3,?:1\n4,5,6,7:2\n", ".ts")
    data = load_ucr("Q", "train", root=tmp_path, znormalize=False)
    assert data.lengths.tolist() == [4, 4] and data.x[0, 0, :3].tolist() == [1, 2, 3] and data.x[0, 0, 3].isnan()


def test_a_byte_order_mark_and_text_that_is_not_utf8(tmp_path, monkeypatch):
    """A UTF-8 byte-order mark (Windows editors write one) became part of the first label (a
    third class '\\ufeff1'); a .ts file that is not UTF-8 text raised UnicodeDecodeError out of
    every command that lists the data sets."""
    folder = tmp_path / "B"
    folder.mkdir()
    (folder / "B_TRAIN.tsv").write_bytes("\ufeff1\t1\t2\t3\r\n2\t5\t6\t8\r\n1\t3\t2\t1\r\n".encode())
    (folder / "B_TEST.ts").write_bytes("\ufeff@classLabel true 1 2\n@data\n1,2,3:1\n".encode())
    data = load_ucr("B", "train", root=tmp_path)
    assert data.classes == (1, 2) and data.y.tolist() == [0, 1, 0]
    assert load_ucr("B", "test", root=tmp_path).y.tolist() == [0]
    latin = tmp_path / "L"
    latin.mkdir()
    (latin / "L_TRAIN.ts").write_bytes(b"@problemName Caf\xe9\n@classLabel true 1\n@data\n1,2,3:1\n")
    assert "L" not in ucr_datasets(tmp_path) and "B" in ucr_datasets(tmp_path)
    with pytest.raises(ValueError, match=r"L_TRAIN\.ts: not UTF-8 text"):
        load_ucr("L", "train", root=tmp_path)


@pytest.mark.parametrize(("key", "value"), [("dimensions", "two"), ("seriesLength", "3.0")])
def test_a_ts_header_number_that_is_not_an_integer_names_the_file_and_key(tmp_path, key, value):
    header = f"@equalLength true\n@{key} {value}\n@classLabel true 1\n@data\n1,2,3:1\n"
    _write(tmp_path, "D", "train", header, ".ts")
    with pytest.raises(ValueError, match=rf"D_TRAIN\.ts: @{key.lower()} must be a whole number, got '{value}'"):
        load_ucr("D", "train", root=tmp_path)


@pytest.mark.parametrize("ext", [".txt", ""])
def test_the_2015_archive_files_are_read(tmp_path, ext):
    """The 2015 archive's files (comma separated, no extension or .txt) were said to be read but
    were never found."""
    _write(tmp_path, "Old", "train", "1,1.0,2.0,3.0\n2,3.0,2.0,1.0\n", ext)
    _write(tmp_path, "Old", "test", "2,1.0,2.0,1.0\n", ext)
    assert "Old" in ucr_datasets(tmp_path)
    data = load_ucr("Old", "train", root=tmp_path, znormalize=False)
    assert data.x[:, 0].tolist() == [[1, 2, 3], [3, 2, 1]] and data.y.tolist() == [0, 1]


def test_result_pickles_and_reads_as_a_dataset(tsv_root):
    data = load_ucr("Tiny", "train", root=tsv_root)
    again = pickle.loads(pickle.dumps(data))
    assert torch.equal(again.x, data.x) and again.classes == data.classes and isinstance(again, _ucr.UCRSplit)
    ds = get_dataset("ucr:Tiny", "train", root=tsv_root)
    assert ds.input_shape == (1, 5) and ds.num_classes == 3 and len(ds) == 4 and ds.name == "ucr:Tiny"
    series, label = ds[0]
    assert torch.equal(series, data.x[0]) and label == 2
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(xb, data.x) and torch.equal(yb, data.y)
    assert len(get_dataset("ucr:Tiny", "train", root=tsv_root, limit=2)) == 2
    assert get_dataset("UCR:Tiny", "train", root=tsv_root).name == "ucr:Tiny"  # the prefix in any case
    nan = get_dataset("ucr:Tiny", "train", root=tsv_root, pad="nan")
    assert torch.isnan(nan.series[1, 0, 2:]).all()
    with pytest.raises(TypeError, match="unknown argument"):
        get_dataset("ucr:Tiny", "train", root=tsv_root, sigma=2.0)


# --- the sets aeon ships ----------------------------------------------------------------------------


@needs_aeon
def test_shipped_sets_are_listed_and_regression_sets_left_out():
    names = ucr_datasets(shipped_only=True)
    for name in ("GunPoint", "ArrowHead", "OSULeaf", "ItalyPowerDemand", "PickupGestureWiimoteZ", "ACSF1"):
        assert name in names and f"ucr:{name}" in stn.data.list_datasets()
    assert "Covid3Month" not in names  # @targetLabel: regression


@needs_aeon
@pytest.mark.parametrize(("name", "train", "test", "length", "classes"), [
    ("GunPoint", 50, 150, 150, 2), ("ArrowHead", 36, 175, 251, 3), ("ItalyPowerDemand", 67, 1029, 24, 2),
])
def test_shipped_sets_have_the_archive_sizes(name, train, test, length, classes):
    # the sizes the UCR archive lists for these sets
    a, b = load_ucr(name, "train"), load_ucr(name, "test")
    assert a.x.shape == (train, 1, length) and b.x.shape == (test, 1, length)
    assert a.num_classes == classes and sorted(set(a.y.tolist())) == list(range(classes))
    assert a.path.parent.parent == SHIPPED


@needs_aeon
def test_shipped_ts_and_tsv_versions_agree_and_are_already_znormalised():
    # aeon ships GunPoint's train split in both formats: two readers, one data set
    ts = load_ucr("GunPoint", "train", znormalize=False)
    tsv = _ucr._read_tsv(SHIPPED / "GunPoint" / "GunPoint_TRAIN.tsv")
    assert ts.path.suffix == ".ts"
    stored = torch.tensor(np.stack([s[0] for s in tsv.series]), dtype=torch.float32)
    assert torch.equal(ts.x[:, 0], stored)
    assert [ts.classes[i] for i in ts.y.tolist()] == [int(label) for label in tsv.labels]
    # GunPoint is z-normalised in the archive (sample standard deviation): normalising again changes only rounding
    assert (load_ucr("GunPoint", "train").x - ts.x).abs().max() < 1e-5


@needs_aeon
def test_shipped_variable_length_set_shares_one_length():
    a, b = load_ucr("PickupGestureWiimoteZ", "train"), load_ucr("PickupGestureWiimoteZ", "test")
    assert a.x.shape[2] == b.x.shape[2] == int(max(a.lengths.max(), b.lengths.max()))
    assert int(a.lengths.min()) < a.x.shape[2] and not torch.isnan(a.x).any()
    assert a.num_classes == 10


def test_numeric_labels_keep_whole_numbers_as_ints_and_others_as_floats(tmp_path):
    """What ``UCRSplit.classes``' docstring says: the type is the label's own where every label is
    a number (it read as one type for the whole set); a set with a word among them keeps strings."""
    for name, rows, classes in (("N", "1.0\t1\t2\n2.5\t3\t2\n1\t0\t1\n", (1, 2.5)), ("W", "a\t1\t2\n2\t3\t2\n", ("2", "a"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_TRAIN.tsv").write_text(rows)
        data = load_ucr(name, root=tmp_path)
        assert data.classes == classes and [type(c) for c in data.classes] == [type(c) for c in classes]
