"""Loading MNIST: IDX (gzipped or not) and npz, root resolution, checksums, corrupt files, downloads."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import struct
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torchstn.data import MNIST_FILES, download_mnist, find_mnist, load_mnist, read_idx
from torchstn.data import _mnist


@pytest.fixture(scope="module")
def test_split(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist(mnist_dir, "test")


def _plain_copy(mnist_dir: Path, target: Path, split: str = "test") -> Path:
    """Decompressed IDX files of ``split`` in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    prefix = "t10k" if split == "test" else "train"
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte"
        with gzip.open(mnist_dir / f"{name}.gz", "rb") as f:
            (target / name).write_bytes(f.read())
    return target


def test_loads_both_splits_with_shapes_dtypes_and_counts(mnist_dir):
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_mnist(mnist_dir, split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        assert torch.bincount(labels).min() > n // 20  # every class is there
        assert int(images.max()) == 255 and int(images.min()) == 0


def test_returns_fresh_tensors(mnist_dir):
    a, _ = load_mnist(mnist_dir, "test")
    a[0] = 7
    b, _ = load_mnist(mnist_dir, "test")
    assert not torch.equal(a[0], b[0])


def test_plain_idx_and_npz_read_the_same_digits(mnist_dir, tmp_path, test_split):
    plain = _plain_copy(mnist_dir, tmp_path / "plain")
    images, labels = load_mnist(plain, "test")
    assert torch.equal(images, test_split[0]) and torch.equal(labels, test_split[1])

    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    train_images, train_labels = load_mnist(mnist_dir, "train")
    np.savez(
        npz_dir / "mnist.npz",
        x_train=train_images.numpy(), y_train=train_labels.numpy(),
        x_test=test_split[0].numpy(), y_test=test_split[1].numpy(),
    )
    images, labels = load_mnist(npz_dir, "test")
    assert torch.equal(images, test_split[0]) and torch.equal(labels, test_split[1])
    assert find_mnist(npz_dir, "test")[0] == "npz"


def test_environment_variable_and_mnist_subdirectory_are_searched(mnist_dir, tmp_path, monkeypatch, test_split):
    data = tmp_path / "data"
    shutil.copytree(mnist_dir, data / "mnist")
    monkeypatch.setenv("TORCHSTN_DATA", str(data))
    images, _ = load_mnist(split="test")
    assert torch.equal(images, test_split[0])
    # an explicit root wins over the environment
    other = _plain_copy(mnist_dir, tmp_path / "other")
    kind, where = find_mnist(other, "test")
    assert kind == "idx" and where[0].parent == other


def test_a_root_without_the_files_is_said_when_another_copy_is_read(mnist_dir, tmp_path, monkeypatch, test_split):
    """A mistyped root (--data-dir) is not silently replaced by the copy further down the search order."""
    monkeypatch.setenv("TORCHSTN_DATA", str(mnist_dir))
    with pytest.warns(UserWarning, match="MNIST is not in .*typo.*reading the copy in"):
        images, _ = load_mnist(tmp_path / "typo", split="test")
    assert torch.equal(images, test_split[0])
    with pytest.warns(UserWarning, match="MNIST is not in"):  # a root holding the other copy deeper down
        load_mnist(mnist_dir.parent.parent, split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mnist(mnist_dir, split="test")  # found where it was asked for: nothing to say
        load_mnist(mnist_dir.parent, split="test")  # in root's mnist/


def test_a_wrong_root_is_said_also_when_the_digits_were_read_before(mnist_dir, tmp_path, monkeypatch):
    """The distorted sets keep the digits they read per process: a later call with a root that
    does not hold them took the kept copy without the warning load_mnist gives; the warning
    points at the user's line, not inside torchstn."""
    from torchstn.data import distorted_mnist, get_dataset

    monkeypatch.setenv("TORCHSTN_DATA", str(mnist_dir))
    (tmp_path / "typo").mkdir()
    distorted_mnist("r", "test", None, limit=2, cache=False)  # the digits read and kept
    with pytest.warns(UserWarning, match="MNIST is not in .*typo.*reading the copy in") as seen:
        distorted_mnist("r", "test", tmp_path / "typo", limit=2, cache=False)
    assert seen[0].filename == __file__
    with pytest.warns(UserWarning, match="MNIST is not in .*typo"):
        get_dataset("mnist-rts", "test", root=tmp_path / "typo", limit=2, cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distorted_mnist("r", "test", mnist_dir, limit=2, cache=False)


def test_a_root_that_is_one_of_the_files_names_its_directory(mnist_dir, tmp_path, monkeypatch):
    """root= the .gz or mnist.npz itself (load_cifar10 takes its archive so) tried to download into
    it: a bare FileExistsError."""
    from torchstn.data import distorted_mnist

    monkeypatch.delenv("TORCHSTN_DATA", raising=False)
    monkeypatch.setenv("TORCHSTN_CACHE", str(tmp_path / "cache"))
    one = mnist_dir / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(ValueError, match=f"root must be the directory .* got the file {one}; give its directory "
                                         f"{mnist_dir}$"):
        load_mnist(one, split="test")
    with pytest.raises(ValueError, match="root must be the directory"):
        distorted_mnist("r", "test", one, limit=2, cache=False)


def test_environment_variables_that_name_a_file_are_named(mnist_dir, tmp_path, monkeypatch):
    """TORCHSTN_DATA or TORCHSTN_CACHE set to a file (mnist.npz itself) failed on the download's
    mkdir with a bare FileExistsError / NotADirectoryError naming no variable; a root that
    holds the files is still read whatever the cache variable says."""
    file = tmp_path / "mnist.npz"
    file.write_bytes(b"")
    monkeypatch.setenv("TORCHSTN_DATA", str(file))
    monkeypatch.setenv("TORCHSTN_CACHE", str(tmp_path / "cache"))
    for download in (True, False):
        with pytest.raises(ValueError, match=f"TORCHSTN_DATA must be the directory .* got the file {file}; set it "
                                             f"to its directory {tmp_path}$"):
            load_mnist(split="test", download=download)
    monkeypatch.delenv("TORCHSTN_DATA")
    monkeypatch.setenv("TORCHSTN_CACHE", str(file))
    with pytest.raises(NotADirectoryError, match=f"TORCHSTN_CACHE must name a directory, got the file {file}$"):
        load_mnist(split="test")
    assert load_mnist(mnist_dir, split="test")[0].shape == (10000, 28, 28)


def test_wrong_magic_number_is_named(mnist_dir, tmp_path):
    plain = _plain_copy(mnist_dir, tmp_path)
    path = plain / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2:4] = b"\x08\x01"  # a labels magic in an images file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="wrong magic number 0x00000801, expected 0x00000803"):
        read_idx(path, "images")


def test_truncated_files_raise_clear_errors(mnist_dir, tmp_path):
    plain = _plain_copy(mnist_dir, tmp_path / "plain")
    path = plain / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="wrong length.*truncated"):
        read_idx(path, "images")
    with pytest.raises(ValueError, match="SHA-256"):  # with the checksum, that is what fails first
        load_mnist(plain, "test")

    gz = tmp_path / "gz"
    gz.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, gz / name)
    cut = gz / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_mnist(gz, "test")


def _idx_labels(n: int = 1000, seed: int = 5) -> tuple[np.ndarray, bytes]:
    """Random labels and their IDX encoding (random, so the gzip stream is long enough to damage)."""
    labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.uint8)
    return labels, (0x00000801).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes()


def test_corrupt_gzip_streams_are_value_errors_naming_the_file(tmp_path):
    labels, raw = _idx_labels()
    stream = gzip.compress(raw, mtime=0)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    # a valid gzip header, then a deflate block of the reserved type 3: zlib.error, not BadGzipFile
    path.write_bytes(stream[:10] + b"\x07" + bytes(100))
    with pytest.raises(ValueError, match="cannot be read as gzip.*invalid block type.*corrupt") as err:
        read_idx(path, "labels")
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    # every flipped byte of the deflate data and its trailer: zlib.error, BadGzipFile or EOFError underneath
    causes = set()
    for offset in range(10, len(stream)):
        damaged = bytearray(stream)
        damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError) as err:
            read_idx(path, "labels")
        assert str(err.value).startswith(f"{path}: cannot be read as gzip ("), err.value
        causes.add(type(err.value.__cause__).__name__)
    assert {"error", "BadGzipFile"} <= causes  # zlib.error is among them
    path.write_bytes(stream)
    np.testing.assert_array_equal(read_idx(path, "labels"), labels)


def test_corrupt_npz_is_a_value_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 28, 28)).astype(np.uint8), rng.integers(0, 10, 8).astype(np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, x_test=images, y_test=labels)
    good = path.read_bytes()
    got = load_mnist(tmp_path, "test", download=False, verify=False)
    assert np.array_equal(got[0].numpy(), images) and np.array_equal(got[1].numpy(), labels)
    with zipfile.ZipFile(path) as archive:
        start = archive.getinfo("x_test.npy").header_offset
    start += 30 + sum(struct.unpack("<HH", good[start + 26 : start + 30]))  # the local header, its name and extra field
    reserved = bytearray(good)
    reserved[start] = 0x07  # the member's deflate data opens with a block of the reserved type
    damaged = [bytes(reserved)]
    for cut in (0, 1, 30, len(good) // 2, len(good) - 1):  # truncated anywhere
        damaged.append(good[:cut])
    for offset in range(0, len(good), 3):  # a flipped byte anywhere, the compressed data included
        flipped = bytearray(good)
        flipped[offset] ^= 0xFF
        damaged.append(bytes(flipped))
    causes = set()
    for data in damaged:
        path.write_bytes(data)
        try:
            got = load_mnist(tmp_path, "test", download=False, verify=False)
        except ValueError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err), err
            causes.add(type(err.__cause__).__name__)
        else:  # a byte nobody reads (a timestamp, a comment): the arrays must be intact
            assert np.array_equal(got[0].numpy(), images) and np.array_equal(got[1].numpy(), labels)
    assert {"BadZipFile", "error", "EOFError"} <= causes  # zlib.error among them


def test_checksum_mismatch_is_an_error_unless_verify_is_off(mnist_dir, tmp_path, test_split):
    plain = _plain_copy(mnist_dir, tmp_path)
    path = plain / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[16 + 14 * 28 + 14] ^= 0xFF  # one pixel of the first digit
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 of the content is .* expected " + MNIST_FILES["t10k-images-idx3-ubyte"]):
        load_mnist(plain, "test")
    images, _ = load_mnist(plain, "test", verify=False)
    assert (images != test_split[0]).sum() == 1


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_missing_and_offline_names_the_four_files_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(_mnist, "MIRRORS", [_refused_url()])
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(empty, "train")
    message = str(err.value)
    for name in MNIST_FILES:
        assert f"{name}.gz" in message
    assert str(empty) in message and "TORCHSTN_DATA" in message
    assert not any(empty.iterdir())  # nothing half-written
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_mnist(tmp_path / "nothing", "test", download=False)


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over a directory, for the download path; yields (directory, url)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def test_download_checks_checksums_and_renames_into_place(mnist_dir, tmp_path, served, monkeypatch):
    mirror, url = served
    for name in MNIST_FILES:
        shutil.copy(mnist_dir / f"{name}.gz", mirror / f"{name}.gz")
    # a first mirror that refuses, then a working one: the second one is used
    monkeypatch.setattr(_mnist, "MIRRORS", [_refused_url(), url])
    target = tmp_path / "downloaded"
    images, labels = load_mnist(target, "test")
    assert images.shape == (10000, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)


def test_download_with_a_bad_checksum_leaves_nothing(mnist_dir, tmp_path, served):
    mirror, url = served
    for name in MNIST_FILES:
        shutil.copy(mnist_dir / f"{name}.gz", mirror / f"{name}.gz")
    with gzip.open(mirror / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10000).to_bytes(4, "big") + bytes(10000))  # valid IDX, wrong labels
    target = tmp_path / "target"
    with pytest.raises(FileNotFoundError, match="SHA-256 of the content"):
        download_mnist(target, mirrors=[url])
    names = sorted(p.name for p in target.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in names
    assert not [n for n in names if n.endswith(".part")]


def test_the_files_in_root_load_without_a_cache_directory(mnist_dir, monkeypatch):
    """With no home directory (a user without a passwd entry and no HOME, or an unknown ~user in
    TORCHSTN_CACHE) load_mnist(root) failed with 'Could not determine home directory' although
    the files were in root; the cache itself, where it is needed, names what to set."""
    monkeypatch.setenv("TORCHSTN_CACHE", "~torchstn_no_such_user_xyz/cache")
    images, labels = load_mnist(mnist_dir, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    with pytest.raises(RuntimeError, match="set TORCHSTN_CACHE to a directory, or HOME"):
        _mnist.default_cache_dir()
