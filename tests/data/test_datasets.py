"""The Dataset path (get_dataset, online epochs, DataLoader workers), the cache and its manifest, folds."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import torchstn as stn
from torchstn.data import _generate, check_dataset_options, distorted_mnist, get_dataset, list_datasets, pstn_fold

NAMES = [
    "mnist", "mnist-r", "mnist-rts", "mnist-p", "mnist-e", "mnist-cluttered",
    "mnist-addition", "mnist-perturbed", "mnist-rotated",
]
# the other names: mnist-3d (tests/data/test_mnist3d.py), cifar10 (test_cifar.py), ucr:<Name> (test_ucr.py)
FIXED = [*NAMES, "mnist-3d", "cifar10"]


def test_names_and_unknown_name():
    names = list_datasets()
    assert names[: len(FIXED)] == FIXED
    assert names[len(FIXED) :] == [f"ucr:{n}" for n in stn.data.ucr_datasets()]
    with pytest.raises(ValueError) as err:
        get_dataset("mnist-twirl")
    for name in FIXED + ["ucr:<Name>"]:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_items_and_attributes(mnist_dir, name):
    ds = get_dataset(name, "test", root=mnist_dir, limit=5, cache=False)
    assert len(ds) == 5
    image, label = ds[3]
    assert image.dtype == torch.float32 and image.shape == ds.input_shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.3
    assert isinstance(label, int) and 0 <= label < ds.num_classes
    assert ds.num_classes == (19 if name == "mnist-addition" else 10)
    if name == "mnist":
        assert ds.input_shape == (1, 28, 28) and ds.params is None and ds.transform is None
    else:
        assert ds.params.shape[0] == 5
        if name != "mnist-addition":
            assert ds.params.shape[1] == ds.transform.num_params
            # the dataset's image is the warp of the original by its params
            original = stn.data.load_mnist(mnist_dir, "test")[0][3].float().div(255)[None, None]
            again = stn.warp(original, ds.params[3:4], ds.transform, size=ds.input_shape[1:])[0]
            if name == "mnist-cluttered":  # the clutter is pasted over the digit with max
                assert (image >= again - 0.5 / 255 - 1e-6).all()
            else:
                assert (again - image).abs().max() <= 0.5 / 255 + 1e-6


def test_online_epochs_are_fresh_reproducible_and_epoch_zero_is_the_fixed_set(mnist_dir):
    online = get_dataset("mnist-rts", "train", root=mnist_dir, online=True, limit=32)
    fixed = get_dataset("mnist-rts", "train", root=mnist_dir, limit=32, cache=False)
    assert len(online) == 32 and online.input_shape == (1, 42, 42)
    first = torch.stack([online[i][0] for i in range(8)])
    assert torch.equal(online.params, fixed.params)
    assert (first - torch.stack([fixed[i][0] for i in range(8)])).abs().max() <= 1 / 255 + 1e-6
    online.set_epoch(1)
    assert not torch.equal(online.params, fixed.params)
    second = torch.stack([online[i][0] for i in range(8)])
    assert (second - first).abs().max() > 0.5
    online.set_epoch(0)
    assert torch.equal(torch.stack([online[i][0] for i in range(8)]), first)
    # the labels stay those of the digits
    assert online.labels.tolist() == fixed.labels.tolist()
    # the test split is always fixed
    assert isinstance(get_dataset("mnist-rts", "test", root=mnist_dir, online=True, limit=4, cache=False),
                      stn.data.MNISTDataset)


def _batches(ds, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers)
    return list(loader)


@pytest.mark.parametrize("online", [False, True], ids=["fixed", "online"])
def test_dataloader_with_workers_gives_the_same_batches(mnist_dir, online):
    ds = get_dataset("mnist-e", "train", root=mnist_dir, online=online, limit=24, cache=False)
    single = _batches(ds, 0)
    parallel = _batches(ds, 2)
    assert len(single) == 3
    for (x0, y0), (x1, y1) in zip(single, parallel):
        assert x0.shape == (8, 1, 28, 28) and x0.dtype == torch.float32 and y0.dtype == torch.int64
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_new_epoch_reaches_persistent_workers(mnist_dir, context):
    """Workers that persist keep the dataset they were given: with the epoch in that copy they
    drew epoch 0's distortions again every epoch, without a word (the docs asked for
    persistent_workers=False). The epoch is in shared memory: each epoch's batches equal those
    of num_workers=0 at that epoch, also in a copy made after the workers."""
    import copy
    import pickle

    ds = get_dataset("mnist-rts", "train", root=mnist_dir, online=True, limit=16)
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True, multiprocessing_context=context)
    seen = []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        seen.append(torch.cat([x for x, _ in loader]))
    for epoch, images in enumerate(seen):
        ds.set_epoch(epoch)
        assert torch.equal(images, torch.cat([x for x, _ in _batches(ds, 0)]))
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    for other in (copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):  # their own epoch, shared with their workers
        other.set_epoch(0)
        assert ds.epoch == 2 and other.epoch == 0 and other._epoch.is_shared()


def test_pstn_folds_are_balanced_disjoint_and_fixed():
    labels = torch.arange(6000) % 10
    folds = [pstn_fold(labels, 100, k) for k in range(5)]
    for idx in folds:
        assert len(idx) == 100 and torch.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert len(torch.unique(torch.cat(folds))) == 500
    assert torch.equal(pstn_fold(labels, 100, 2), folds[2])
    assert len(pstn_fold(labels, 33, 0)) == 33
    with pytest.raises(ValueError, match="fold must be in"):
        pstn_fold(labels, 30, 5)
    with pytest.raises(ValueError, match="disjoint folds"):
        pstn_fold(labels, 2000, 0)


def test_rotated_subset_through_get_dataset(mnist_dir):
    ds = get_dataset("mnist-rotated", "test", root=mnist_dir, subset=30, fold=1, cache=False, limit=None)
    assert len(ds) == 30 and torch.bincount(ds.labels, minlength=10).tolist() == [3] * 10
    assert ds.params.shape == (30, 4)
    online = get_dataset("mnist-rotated", "train", root=mnist_dir, online=True, subset=100, fold=0)
    assert len(online) == 100 and torch.bincount(online.labels, minlength=10).tolist() == [10] * 10


@pytest.mark.parametrize("kind", ["mnist-addition", "mnist-rotated"])
def test_a_subset_is_the_same_images_fixed_and_online(kind, mnist_dir):
    """Online, epoch 0 is the fixed set, a subset included: both balance a fold over the
    (first) digits' classes, n // 10 each (the fixed addition set once balanced the sums)."""
    fixed = get_dataset(kind, "train", root=mnist_dir, subset=30, fold=0, cache=False)
    online = get_dataset(kind, "train", root=mnist_dir, subset=30, fold=0, online=True)  # (the test split's is fixed)
    items = lambda ds: torch.stack([ds[i][0] for i in range(len(ds))])  # noqa: E731
    assert len(fixed) == len(online) == 30 and torch.equal(items(fixed), items(online))
    assert torch.equal(fixed.labels, online.labels)
    # the same fold taken from the whole split (MNISTDataset.subset balanced addition's sums)
    test_fold = get_dataset(kind, "test", root=mnist_dir, subset=30, fold=2, cache=False)
    for whole in (get_dataset(kind, "test", root=mnist_dir, cache=False),
                  get_dataset(kind, "test", root=mnist_dir, online=True)):
        assert torch.equal(items(whole.subset(30, 2)), items(test_fold))


def test_an_empty_online_or_volume_set_has_empty_params_and_batches(mnist_dir):
    """limit=0 gave a set whose params, current_draw() and __getitems__([]) failed in
    torch.cat of nothing: empty ones, as the fixed set's."""
    fixed = get_dataset("mnist-rts", "train", root=mnist_dir, limit=0, cache=False)
    for ds in (get_dataset("mnist-rts", "train", root=mnist_dir, limit=0, online=True),
               get_dataset("mnist-3d", "test", root=mnist_dir, limit=0)):
        assert len(ds) == 0 and ds.__getitems__([]) == [] and ds.labels.shape == (0,)
        assert ds.params.shape[0] == 0 and ds.params.shape[1] == ds.transform.num_params
        assert ds.current_draw().params.shape == ds.params.shape
    assert fixed.__getitems__([]) == [] and fixed.params.shape == (0, 4)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "ucr:GunPoint"])
def test_online_is_refused_where_there_is_nothing_to_redraw(name, tmp_path):
    # (once accepted, recorded in a run's config, and the fixed set returned); refused before any file is read
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=f"online=True .* {name} is not distorted"):
            get_dataset(name, split, root=tmp_path, online=True)


def test_an_online_elastic_item_is_rendered_as_in_a_batch(mnist_dir):
    """mnist-e item by item (``ds[i]``) is the fixed set bit for bit: the grid of one thin-plate
    spline alone took the BLAS's matrix-vector kernel, 1/255 apart in 11 of 2,048 digits (two of
    them, 214 and 339, among the first 400); computed as a batch of two instead, it still differed
    on an AMD Zen 4, whose BLAS sums batches of up to three rows in another order than larger ones."""
    fixed = get_dataset("mnist-e", "train", root=mnist_dir, limit=400, cache=False)
    online = get_dataset("mnist-e", "train", root=mnist_dir, limit=400, online=True)
    alone = torch.stack([online[i][0] for i in range(400)])
    assert torch.equal(alone, fixed.images.float() / 255)


def test_a_fold_needs_a_subset_and_every_set_takes_set_epoch(mnist_dir):
    with pytest.raises(ValueError, match="fold picks a fold of a subset"):
        get_dataset("mnist-r", "test", root=mnist_dir, fold=3, limit=3, cache=False)  # (once ignored)
    for split in ("train", "test"):  # the online test split is a fixed set: set_epoch is there too
        get_dataset("mnist-rts", split, root=mnist_dir, online=True, limit=4, cache=False).set_epoch(1)


def test_get_dataset_states_every_option_and_names_a_misspelt_one(mnist_dir):
    params = inspect.signature(get_dataset).parameters
    named = {"root", "seed", "online", "limit", "subset", "fold", "cache", "cache_dir", "download", "verify"}
    assert named <= {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert params["fold"].default == 0 and params["cache"].default is True and params["subset"].default is None
    with pytest.raises(TypeError, match="'limt'"):
        get_dataset("mnist", "test", root=mnist_dir, limt=3)
    with pytest.raises(TypeError, match="'subest'"):  # not a recipe option either
        get_dataset("mnist-r", "test", root=mnist_dir, subest=30, cache=False)
    with pytest.raises(TypeError, match="name must be one of"):
        get_dataset(3)
    with pytest.raises(TypeError, match="subset must be an int"):
        get_dataset("mnist", "test", root=mnist_dir, subset=30.0)
    with pytest.raises(ValueError, match="canonical MNIST"):  # the distorted sets are made from verified digits
        get_dataset("mnist-r", "test", root=mnist_dir, verify=False, cache=False)
    plain = get_dataset("MNIST", "test", root=mnist_dir, limit=3, download=False, verify=False, cache_dir="unused")
    assert len(plain) == 3 and plain.name == "mnist"
    sharper = get_dataset("mnist-e", "test", root=mnist_dir, limit=3, cache=False, sigma=1.0)
    assert sharper.params.shape == (3, 32) and not torch.equal(sharper.params, get_dataset(
        "mnist-e", "test", root=mnist_dir, limit=3, cache=False).params)  # recipe options still reach the recipe


def test_wrong_types_are_type_errors_and_wrong_values_value_errors():
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="images must be uint8"):
        stn.data.MNISTDataset(torch.zeros(2, 1, 4, 4), labels)
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        stn.data.MNISTDataset(torch.zeros(2, 4, 4, dtype=torch.uint8), labels)
    with pytest.raises(TypeError, match="kind must be one of"):
        distorted_mnist(3, "test", cache=False)
    with pytest.raises(ValueError, match="kind must be one of .*got 'twirl'"):
        distorted_mnist("mnist-twirl", "test", cache=False)


def test_sets_rendered_without_the_fused_kernel_are_keyed_apart(mnist_dir, tmp_path, monkeypatch):
    """F.grid_sample, which renders where the fused kernel cannot be built, rounds a few
    pixels in a thousand images one level apart: the same key served either machine's bytes
    as the other's. Such sets are keyed apart and say so in their manifest; the fused
    kernel's keys are unchanged."""
    fused = _generate.cache_path("r", "test", cache_dir=tmp_path, root=mnist_dir)
    monkeypatch.setattr(_generate, "fused_status", lambda ndim=2: stn.sampling.FusedStatus(False, "no compiler"))
    without = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, limit=None)
    assert without.path != fused and without.manifest["renderer"] == "torch"
    _, identity = _generate._key(without.recipe, "test", 0, without.sources.fingerprint)
    monkeypatch.undo()
    _, fused_identity = _generate._key(without.recipe, "test", 0, without.sources.fingerprint)
    assert "renderer" not in fused_identity and {**fused_identity, "renderer": "torch"} == identity


def test_cache_is_written_reused_and_invalidated(mnist_dir, tmp_path, monkeypatch):
    first = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path)
    assert first.path is not None and first.path.parent == tmp_path / "distorted"
    assert _generate.cache_path("r", "test", cache_dir=tmp_path, root=mnist_dir) == first.path
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["recipe"] == first.recipe.describe() and manifest["seed"] == 0 and manifest["split"] == "test"
    assert manifest["torchstn_version"] == stn.__version__ and manifest["count"] == 10000
    arrays = {k: np.load(first.path / f"{k}.npy") for k in manifest["files"]}
    assert _generate._content_hash(arrays) == manifest["content_sha256"]
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no temporary left

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cache holds this set")

    with monkeypatch.context() as m:
        m.setattr(_generate, "render_all", no_render)
        again = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path)
        assert again.path == first.path and torch.equal(again.images, first.images)
        limited = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, limit=7)
        assert torch.equal(limited.images, first.images[:7]) and torch.equal(limited.params, first.params[:7])
        assert limited.path == first.path and limited.manifest["content_sha256"] == manifest["content_sha256"]
        with pytest.raises(AssertionError, match="rendered"):  # a changed recipe is not served from the cache
            distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, angle=45.0)

    changed = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, angle=45.0)
    assert changed.path != first.path and changed.params[:, 1].abs().max() <= np.radians(45) + 1e-6
    unstored = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, limit=7, cache=False)
    assert unstored.path is None and unstored.manifest is None and torch.equal(unstored.images, first.images[:7])

    # a corrupted cache is detected by its content hash and regenerated
    images = np.load(first.path / "images.npy")
    images[0, 0, 14, 14] ^= 0xFF
    np.save(first.path / "images.npy", images)
    repaired = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path)
    assert torch.equal(repaired.images, first.images)



def test_damage_of_every_kind_is_drawn_again(mnist_dir, tmp_path):
    """A mangled .npy header (tokenize's TokenError from inside numpy), a manifest of another JSON
    type (AttributeError) and a file in the set's place (the rename failed, naming a temporary
    directory, after the whole set was rendered) were tracebacks on every later call."""
    first = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path)
    header = first.path / "images.npy"
    raw = bytearray(header.read_bytes())
    raw[raw.index(b"}")] = ord("x")
    header.write_bytes(bytes(raw))
    assert torch.equal(distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path).images, first.images)
    for manifest in ("null", "[]", '"x"'):
        (first.path / "manifest.json").write_text(manifest)
        assert torch.equal(distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path).images, first.images)
    shutil.rmtree(first.path)
    first.path.write_text("not a set")
    again = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path)
    assert first.path.is_dir() and torch.equal(again.images, first.images)


def test_a_numpy_or_tensor_seed_is_the_int_it_holds(mnist_dir):
    """np.int64(1) failed in the cache key's json.dumps (even with cache=False), and a tensor seed of
    an online set was hashed as "tensor(1)": other draws than seed=1, without a word."""
    one = distorted_mnist("r", "test", mnist_dir, 1, limit=3, cache=False)
    assert torch.equal(distorted_mnist("r", "test", mnist_dir, np.int64(1), limit=3, cache=False).images, one.images)
    online = [stn.data.get_dataset("mnist-r", "train", root=mnist_dir, seed=seed, online=True, limit=4)
              for seed in (1, torch.tensor(1))]
    for ds in online:
        ds.set_epoch(1)
    assert torch.equal(online[0][0][0], online[1][0][0])


def test_concurrent_writers_of_one_set_do_not_fail(mnist_dir, tmp_path, monkeypatch):
    """`reproduce --jobs 2` or two commands can generate the same set at once: the later writer keeps the
    first one's valid copy, and a stale copy another process is removing does not crash the rmtree."""
    first = distorted_mnist("r", "test", mnist_dir, cache_dir=tmp_path, limit=None)
    manifest = json.loads((first.path / "manifest.json").read_text())
    arrays = {k: np.load(first.path / f"{k}.npy") for k in manifest["files"]}
    before = (first.path / "images.npy").stat().st_ino
    _generate._write_cache(first.path, arrays, manifest)  # the copy already there is valid: kept as it is
    assert (first.path / "images.npy").stat().st_ino == before

    stale = dict(manifest, key="stale")
    (first.path / "manifest.json").write_text(json.dumps(stale))
    real_rmtree = _generate.shutil.rmtree

    def racing_rmtree(path, ignore_errors=False, **kwargs):
        if Path(path) == first.path:  # another process removes the same stale copy at the same moment
            (first.path / "params.npy").unlink()
            if not ignore_errors:
                raise FileNotFoundError(2, "No such file or directory", "params.npy")  # what the race raised
        return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(_generate.shutil, "rmtree", racing_rmtree)
    _generate._write_cache(first.path, arrays, manifest)
    assert _generate._read_cache(first.path, manifest["key"]) is not None
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("name", "options", "valid"),
    [
        ("mnist-p", {"supersample": 4}, True),
        ("MNIST-RTS", {"sigma": 1.0}, False),  # a recipe option of another kind
        ("mnist-p", {"supersample": 99}, False),  # out of range
        ("mnist-rts", {"border": 2.0}, True),
        ("mnist-rts", {"border": 0.4}, False),  # whole pixels (0.4 was rounded to 0 without a word)
        ("mnist-addition", {"supersample": 2}, False),  # a recipe that is not one warp per sample
        ("mnist", {"supersample": 4}, False),
        ("mnist", {}, True),
        ("mnist-7", {}, False),
    ],
)
def test_check_dataset_options_is_get_datasets_own_check(mnist_dir, name, options, valid):
    """``check_dataset_options`` (what the command calls before any data) accepts and refuses
    exactly what ``get_dataset`` does, with the same error."""
    def outcome(call):
        try:
            call()
        except (TypeError, ValueError) as err:
            return type(err), str(err)
        return None

    checked = outcome(lambda: check_dataset_options(name, options))
    assert (checked is None) == valid, checked
    assert checked == outcome(lambda: get_dataset(name, "test", root=mnist_dir, limit=2, cache=False, **options))


def test_check_dataset_options_checks_a_ucr_sets_option_names_only():
    check_dataset_options("ucr:Coffee", {"znormalize": True, "pad": "edge"})  # values are checked where it loads
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['supersample'\] for a UCR data set"):
        check_dataset_options("ucr:Coffee", {"supersample": 4})
