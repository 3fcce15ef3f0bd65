"""CIFAR-10: the python-version archive's reader on a tiny archive of the real format written here."""

from __future__ import annotations

import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.data import CIFAR10_URL, get_dataset, load_cifar10

SIZES = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 1, "data_batch_4": 2, "data_batch_5": 2, "test_batch": 4}


def _batch(n: int, seed: int) -> dict:
    """A batch as the archive pickles it: bytes keys, uint8 (n, 3072) rows, a list of int labels."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def archive(tmp_path) -> tuple[Path, dict[str, dict]]:
    """``(root, batches)``: ``root/cifar-10-batches-py/`` and ``root/cifar-10-python.tar.gz`` of the same batches."""
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {name: _batch(n, seed) for seed, (name, n) in enumerate(SIZES.items())}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    (tmp_path / "packed").mkdir()
    with tarfile.open(tmp_path / "packed" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return tmp_path, batches


def test_a_root_without_the_archive_is_said_when_another_copy_is_read(archive, tmp_path, monkeypatch):
    """A mistyped root (--data-dir) is not silently replaced by the copy further down the search order."""
    root, batches = archive
    monkeypatch.setenv("TORCHSTN_DATA", str(root / "packed"))
    with pytest.warns(UserWarning, match="CIFAR-10 is not in .*typo.*reading the copy in .*tar.gz"):
        images, labels = load_cifar10(tmp_path / "typo", "test")
    assert labels.tolist() == batches["test_batch"][b"labels"]
    with pytest.warns(UserWarning, match="CIFAR-10 is not in"):  # a root holding the other copy deeper down
        load_cifar10(root, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(root / "extracted", "test")  # found where it was asked for: nothing to say
        load_cifar10(None, "test")


def _expected(batches: dict[str, dict], names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference layout, element by element: pixel (c, r, k) of image n is data[n, 1024 c + 32 r + k]."""
    rows = np.concatenate([batches[n][b"data"] for n in names])
    images = np.zeros((len(rows), 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for r in range(32):
            images[:, c, r, :] = rows[:, 1024 * c + 32 * r : 1024 * c + 32 * r + 32]
    labels = np.concatenate([batches[n][b"labels"] for n in names])
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


@pytest.mark.parametrize("where", ["parent", "folder", "tar", "tar-parent"])
def test_reads_both_splits_from_folder_or_tar(archive, where):
    root, batches = archive
    location = {
        "parent": root / "extracted",
        "folder": root / "extracted" / "cifar-10-batches-py",
        "tar": root / "packed" / "cifar-10-python.tar.gz",
        "tar-parent": root / "packed",
    }[where]
    images, labels = load_cifar10(location, "train")
    ref_images, ref_labels = _expected(batches, [f"data_batch_{i}" for i in range(1, 6)])
    assert images.dtype == torch.uint8 and images.shape == (10, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    images, labels = load_cifar10(location, "test")
    ref_images, ref_labels = _expected(batches, ["test_batch"])
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_found_through_torchstn_data(archive, monkeypatch):
    root, batches = archive
    monkeypatch.setenv("TORCHSTN_DATA", str(root / "packed"))
    assert load_cifar10(None, "test")[0].shape == (4, 3, 32, 32)


def test_missing_archive_names_the_files_the_folder_and_the_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path, "train")
    message = str(err.value)
    for part in ("cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_1", "data_batch_5", str(tmp_path), CIFAR10_URL):
        assert part in message


def test_a_missing_archive_given_as_root_is_named_as_the_file_to_download(tmp_path):
    """root= the .tar.gz itself, not there yet: the message said to put the archive into a folder
    named after the archive, and listed <archive>/cifar10 among the folders it looked in."""
    missing = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(missing, "test")
    message = str(err.value)
    assert f"{missing} does not exist; download {CIFAR10_URL} to that path" in message
    assert f"{missing}/" not in message and f"into {missing}" not in message


def test_a_folder_missing_some_batches_says_which(archive):
    root, _ = archive
    (root / "extracted" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4 missing"):
        load_cifar10(root / "extracted", "train")
    assert load_cifar10(root / "extracted", "test")[0].shape[0] == 4  # the test split is whole


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"uint8 \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"uint8 \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"must be 2 ints"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must be in 0\.\.9"),
        ({b"labels": [0]}, r"needs b'data'"),
        ([1, 2, 3], r"a pickled dict"),
    ],
)
def test_malformed_batches_raise_naming_the_file(archive, content, match):
    root, _ = archive
    path = root / "extracted" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=match) as err:
        load_cifar10(root / "extracted", "test")
    assert str(path) in str(err.value)


class _Exploit:
    def __reduce__(self):  # what a tampered batch could hold: a call run at unpickling
        return (os.system, ("touch pwned",))


def test_a_tampered_pickle_is_refused_not_run(archive, monkeypatch):
    root, _ = archive
    monkeypatch.chdir(root)
    (root / "extracted" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(ValueError, match="is not part of a CIFAR batch"):
        load_cifar10(root / "extracted", "test")
    assert not (root / "pwned").exists()


def test_truncated_tar_is_a_clear_error(archive):
    root, _ = archive
    packed = root / "packed" / "cifar-10-python.tar.gz"
    packed.write_bytes(packed.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot be read as a .tar.gz"):
        load_cifar10(packed, "train")


def test_get_dataset_cifar10(archive):
    root, batches = archive
    ds = get_dataset("cifar10", "test", root=root / "extracted")
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and len(ds) == 4 and ds.name == "cifar10"
    image, label = ds[1]
    ref_images, ref_labels = _expected(batches, ["test_batch"])
    assert image.dtype == torch.float32 and torch.equal(image, ref_images[1].float() / 255)
    assert label == int(ref_labels[1])
    assert len(get_dataset("cifar10", "train", root=root / "extracted", limit=3)) == 3
    with pytest.raises(TypeError, match="unknown argument"):
        get_dataset("cifar10", "test", root=root / "extracted", sigma=1.0)
