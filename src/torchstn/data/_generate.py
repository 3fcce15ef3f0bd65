"""Fixed distorted-MNIST sets: batched generation and the on-disk cache with its manifest.

A generated split is cached as one directory of ``.npy`` arrays plus a
``manifest.json`` (recipe, options, seed, split, library version, a fingerprint of the
source digits and a SHA-256 of the content). The directory's name carries a hash of
everything that determines the bytes, so a changed recipe (an option, the recipe's
version, the seed or the source data) is looked up under a new name and the old
cache is never reused; a cache whose content hash disagrees with its manifest is
regenerated. A cache is written to a temporary directory and renamed into place,
so a half-written cache is never found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchstn._validation import check_bool, check_choice, check_int, check_path
from torchstn._version import __version__
from torchstn.data._geometry import make_generator
from torchstn.data._mnist import SPLITS, default_cache_dir, find_mnist, found_dir, load_mnist, warn_if_not_in_root
from torchstn.data._recipes import Draw, Recipe, Sources, get_recipe
from torchstn.sampling import fused_status
from torchstn.transforms import Transform

__all__ = ["BLOCK", "MAX_BYTES", "DistortedMNIST", "cache_path", "distorted_mnist", "draw_blocks", "draw_split", "load_sources", "render_all"]

_FORMAT = 1
_CHUNK = 2048  # samples rendered per warp call: bounds the memory of one grid
_CHUNK_VOXELS = 1 << 24  # volumes: at most this many output voxels per warp call (a 200 MB grid)
#: the largest set :func:`distorted_mnist` renders whole without an explicit ``limit``
MAX_BYTES = 1 << 31
#: samples per independently seeded block of draws (part of the data's identity)
BLOCK = 1024


def image_items(images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
    """Items ``indices`` of uint8 ``images`` with their ``labels``: ``(image float32 (C, H, W) in [0, 1], label int)``."""
    index = torch.as_tensor(indices, dtype=torch.long, device="cpu")
    return list(zip(images[index].float().div_(255).unbind(0), labels[index].tolist()))


@dataclass
class DistortedMNIST:
    """A generated split with the ground truth of every sample.

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64.
        params: ``(N, P)`` float32: ``warp(original / 255, params, transform, size=(H, W))``
            reproduces ``images / 255`` (up to the uint8 rounding; for ``cluttered``, the
            digit without the clutter added after its warp).
        transform: the family of ``params`` (``None`` for ``addition``: two Similarities).
        source: ``(N,)`` int64 index into ``sources`` of each sample's digit
            (``(N, 2)`` for ``addition``).
        extras: kind-specific ``(N, ...)`` tensors (``cluttered``: the patches).
        recipe: the :class:`~torchstn.data._recipes.Recipe` (kind and options).
        split, seed: as requested.
        sources: the undistorted split (``sources.images`` ``(M, 28, 28)`` uint8).
        path: the cache directory the arrays came from or went to (``None`` if not cached).
        manifest: the cache manifest (``None`` if not cached).

    Indexing gives :class:`~torchstn.data.MNISTDataset`'s items, ``(image float32 (C, H, W)
    in [0, 1], label int)``: the record is also a map-style dataset for a ``DataLoader``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    params: torch.Tensor
    transform: Transform | None
    source: torch.Tensor
    extras: dict[str, torch.Tensor]
    recipe: Recipe
    split: str
    seed: int
    sources: Sources
    path: Path | None = None
    manifest: dict[str, Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Sample ``index`` as :class:`~torchstn.data.MNISTDataset` gives it: ``(image float32
        (C, H, W) in [0, 1], label int)``, so the record also serves as a map-style dataset."""
        return image_items(self.images, self.labels, [index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        return image_items(self.images, self.labels, indices)

    @property
    def kind(self) -> str:
        return self.recipe.kind

    def originals(self) -> torch.Tensor:
        """The undistorted digit(s) of each sample: ``(N, 28, 28)`` (``(N, 2, 28, 28)`` for addition) uint8."""
        return self.sources.images[self.source]

    def canonical(self) -> torch.Tensor:
        """What ``params`` warp into the samples: float32 in [0, 1], ``(N, 1, 28, 28)`` digits
        (``(N, 1, T, 28, 28)`` extruded digits for ``3d``), so that ``warp(d.canonical(),
        d.params, d.transform, size=d.images.shape[2:])`` renders ``d.images / 255`` up to
        the uint8 rounding (for ``cluttered``, the digit without its clutter).

        Raises:
            ValueError: ``addition`` (two digits per sample, no single family).
        """
        if self.transform is None:
            raise ValueError(f"mnist-{self.kind} has no single transform family: warp each channel's digit by its own params")
        return self.recipe.originals(self.sources, self.source)


_SOURCES: dict[tuple[Any, ...], Sources] = {}


def load_sources(root: str | os.PathLike | None, split: str) -> Sources:
    """The undistorted digits of ``split`` (see :func:`~torchstn.data.load_mnist`).

    Kept per process for the files found (by path, size and modification time), so
    asking for several sets of the same split reads and checks the files once.
    """
    hit = find_mnist(root, split)
    key = None
    if hit is not None:
        paths = hit[1] if isinstance(hit[1], tuple) else (hit[1],)
        key = (split, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))
        if key in _SOURCES:  # (read before: from a root that held them, or not, as load_mnist says)
            warn_if_not_in_root(root, found_dir(hit), "mnist", "MNIST")
            return _SOURCES[key]
    sources = Sources(*load_mnist(root, split))
    if key is not None:
        while len(_SOURCES) >= 2:  # the train and the test split
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = sources
    return sources


def draw_blocks(recipe: Recipe, sources: Sources, split: str, seed: int, epoch: int, blocks: range) -> Draw:
    """The random choices of the sample blocks ``blocks`` (each :data:`BLOCK` samples).

    Block ``b`` is drawn from its own stream seeded by ``(seed, kind, split, epoch, b)``:
    the splits (and the epochs) never share a draw, and the first ``n`` samples are the
    same whether or not the rest of the split is drawn.
    """
    n = len(sources)
    draws = []
    with _one_thread():
        for b in blocks:
            index = torch.arange(b * BLOCK, min((b + 1) * BLOCK, n))
            draws.append(recipe.draw(sources, index, make_generator(seed, recipe.kind, split, epoch, b)))
    return Draw.cat(draws)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the many small tensor operations of drawing on one thread.

    They are too small to gain from intra-op threads, and on a busy machine the
    threads' synchronisation costs far more than the work (measured: 10x slower draws
    on 2 loaded cores). The sampler's large batches keep the caller's thread count.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def draw_split(recipe: Recipe, sources: Sources, split: str, seed: int, epoch: int = 0, count: int | None = None) -> Draw:
    """The random choices of the first ``count`` (default all) samples of a split.

    Epoch 0 is the fixed set; later epochs are fresh draws (see :func:`draw_blocks`).
    """
    n = len(sources) if count is None else min(count, len(sources))
    draw = draw_blocks(recipe, sources, split, seed, epoch, range(max(1, -(-n // BLOCK))))
    if n == len(draw.labels):
        return draw
    return Draw(draw.params[:n], draw.source[:n], draw.labels[:n], {k: v[:n] for k, v in draw.extras.items()}, draw.stats)


def render_all(
    recipe: Recipe,
    sources: Sources,
    draw: Draw,
    count: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Render the first ``count`` (default all) samples of ``draw`` in chunks: uint8 ``(N, C, H, W)``."""
    n = len(draw.labels) if count is None else count
    out = torch.empty((n, *recipe.input_shape), dtype=torch.uint8)
    chunk = _CHUNK if len(recipe.input_shape) == 3 else max(1, _CHUNK_VOXELS // math.prod(recipe.input_shape))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = recipe.render(sources, draw, torch.arange(start, stop))
        if progress is not None:
            progress(stop - start)
    return out


def _key(recipe: Recipe, split: str, seed: int, source: str) -> tuple[str, dict[str, Any]]:
    identity = {
        "format": _FORMAT,
        "block": BLOCK,
        "recipe": recipe.describe(),
        "split": split,
        "seed": seed,
        "source_sha256": source,
    }
    # rendered by torchstn's fused kernel where it is built (the key of such sets says nothing
    # of it); F.grid_sample, where it is not, rounds a few pixels in a thousand images one
    # level (1/255) apart: those sets are keyed apart
    if not fused_status(ndim=len(recipe.input_shape) - 1).available:
        identity["renderer"] = "torch"
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), identity


def cache_path(kind: str, split: str = "train", seed: int = 0, *, cache_dir: str | os.PathLike | None = None,
               root: str | os.PathLike | None = None, **options: Any) -> Path:
    """Where :func:`distorted_mnist` caches this set (whether or not it exists yet)."""
    seed = check_int("seed", seed)
    recipe = get_recipe(kind, options)
    sources = load_sources(root, split)
    key, _ = _key(recipe, split, seed, sources.fingerprint)
    return _set_path(cache_dir, recipe, split, seed, key)


def _set_path(cache_dir: str | os.PathLike | None, recipe: Recipe, split: str, seed: int, key: str) -> Path:
    """The cache directory of one set: ``<cache_dir>/distorted/<kind>-<split>-seed<seed>-<key[:16]>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "distorted" / f"{recipe.kind}-{split}-seed{seed}-{key[:16]}"


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def _arrays(images: torch.Tensor, draw: Draw) -> dict[str, np.ndarray]:
    arrays = {"images": images, "labels": draw.labels, "params": draw.params, "source": draw.source}
    arrays.update({f"extra_{k}": v for k, v in draw.extras.items()})
    return {k: v.contiguous().numpy() for k, v in arrays.items()}


def _check_writable(directory: Path) -> None:
    """Raise ``OSError`` naming ``directory`` and what to do if a set cannot be cached in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as error:
        raise OSError(
            f"cannot write the cache in {directory} ({error.strerror or error}): pass a writable cache_dir= "
            "(--cache-dir, or set TORCHSTN_CACHE), or cache=False to generate without caching"
        ) from error


def _write_cache(path: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        # readable as its parent, which mkdir made under the umask, and writable by its owner only
        # (mkdtemp makes it 0700: another user of a shared cache could not read the set; a 1777
        # parent's bits would have let anyone replace it)
        tmp.chmod(path.parent.stat().st_mode & 0o755)
        if path.is_symlink() or path.is_file():  # damage in the set's place (rmtree left it, and the rename failed)
            path.unlink(missing_ok=True)
        elif path.exists():
            if _read_cache(path, manifest["key"]) is not None:  # a concurrent writer finished first: keep its copy
                return
            shutil.rmtree(path, ignore_errors=True)  # stale or corrupt (another writer may be removing it too)
        try:
            os.rename(tmp, path)
        except OSError:
            if _read_cache(path, manifest["key"]) is None:  # not a concurrent writer's valid copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(path: Path, key: str, verify: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached arrays and manifest, or ``None`` if missing, stale or corrupt.

    Damage surfaces as many types: a manifest of another JSON type (``AttributeError``,
    ``TypeError``), a mangled ``.npy`` header (``ValueError``, ``tokenize.TokenError``, a
    ``MemoryError`` for a huge shape), besides ``OSError``. The ``try`` holds nothing but the
    reading, so any error there means the entry cannot be read, and it is drawn again.
    """
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("key") != key or manifest.get("format") != _FORMAT:
            return None
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in manifest["files"]}
    except Exception:  # (see above: once a traceback from inside numpy on every later call)
        return None
    if verify and _content_hash(arrays) != manifest.get("content_sha256"):
        return None
    return arrays, manifest


def distorted_mnist(
    kind: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    limit: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> DistortedMNIST:
    """A distorted-MNIST split with the transformation of every sample.

    Kinds (STN paper, appendix A; IC-STN; P-STN), each a recipe in
    :mod:`torchstn.data._recipes` whose docstring gives the exact law and the choices
    the papers leave open: ``"r"`` (rotation ±90°), ``"rts"`` (rotation ±45°, scale
    0.7-1.2, translation on 42x42), ``"p"`` (projective), ``"e"`` (elastic,
    thin-plate spline), ``"cluttered"`` (60x60 with 6 patches of clutter),
    ``"addition"`` (two RTS digits on two channels, label = sum), ``"perturbed"``
    (IC-STN perturbed homographies), ``"rotated"`` (P-STN, rotation ±180°), ``"3d"``
    (STN: a digit extruded into a 60x60x60 volume, rotated, scaled and moved in 3-D;
    13 GB as a whole train split, so it needs ``limit``, see :data:`MAX_BYTES`).

    Generation is batched through :func:`torchstn.warp`; the same ``(kind, options,
    split, seed)`` gives the same bytes on every run, and the train and test splits
    never share a draw. The full split is cached (see the module docstring) unless
    ``cache=False``.

    Args:
        kind: one of the kinds above (an ``"mnist-"`` prefix is accepted).
        split: ``"train"`` or ``"test"``.
        root: where the MNIST files are (see :func:`~torchstn.data.load_mnist`).
        seed: seed of the distortions.
        limit: render only the first ``limit`` samples (the same as the first ``limit``
            of the full set; nothing is written to the cache).
        cache: read and write the cache.
        cache_dir: cache root (default ``$TORCHSTN_CACHE`` or ``~/.cache/torchstn``);
            sets live under ``<cache_dir>/distorted/``.
        progress: called with the number of samples rendered after each chunk.
        **options: recipe options (e.g. ``canvas=36``, ``sigma=2.0``, ``mode="bicubic"``,
            ``keep_inside=False``); unknown names raise ``TypeError``.

    Returns:
        A :class:`DistortedMNIST` (images uint8 ``(N, C, H, W)``, labels, params, ...).

    Example:
        >>> d = stn.data.distorted_mnist("rts", "test", limit=4, cache=False)  # doctest: +SKIP
        >>> d.images.shape, d.params.shape, d.transform  # doctest: +SKIP
        (torch.Size([4, 1, 42, 42]), torch.Size([4, 4]), Similarity())
    """
    check_choice("split", split, SPLITS)
    seed = check_int("seed", seed)  # (a numpy or tensor integer as an int: the cache key is JSON)
    if limit is not None:
        check_int("limit", limit, 0)
    check_bool("cache", cache)
    check_path("root", root)
    check_path("cache_dir", cache_dir)
    recipe = get_recipe(kind, options)
    sources = load_sources(root, split)
    n = len(sources) if limit is None else min(limit, len(sources))
    size = n * math.prod(recipe.input_shape)
    if limit is None and size > MAX_BYTES:
        per = math.prod(recipe.input_shape)
        raise ValueError(
            f"mnist-{recipe.kind} {split} is {n} x {'x'.join(map(str, recipe.input_shape))} = {size / 1e9:.1f} GB "
            f"as uint8, too much to render whole: pass limit= (limit={MAX_BYTES // per // 1000 * 1000} is "
            f"{MAX_BYTES // per // 1000 * 1000 * per / 1e9:.1f} GB), or use get_dataset('mnist-{recipe.kind}', "
            f"'{split}'), which renders each batch on the fly"
        )
    key, identity = _key(recipe, split, seed, sources.fingerprint)
    path = _set_path(cache_dir, recipe, split, seed, key)
    if cache and (hit := _read_cache(path, key)) is not None:
        arrays, manifest = hit
        images, draw = _unpack(arrays, n)
        stats = manifest.get("stats", {})  # (the draws' counts, as when the set was rendered)
    else:
        if cache and limit is None:
            _check_writable(path.parent)  # before the rendering, which takes minutes
        with torch.device("cpu"):  # (the draws and the rendering are the CPU's under any default device)
            draw = draw_split(recipe, sources, split, seed, count=n)
            images = render_all(recipe, sources, draw, n, progress)
        manifest = _store(path, key, identity, recipe, images, draw) if cache and limit is None else None
        stats = draw.stats
    drawn = stats.get("placed", n)  # (counted over whole blocks of draws, or the whole split of a cached set)
    part = f", drawn in blocks of which this set holds the first {n:,} samples" if n < drawn else ""
    recipe.warn_unfit(stats, f"mnist-{recipe.kind} {split} (seed {seed}){part}")
    return DistortedMNIST(
        images, draw.labels, draw.params, recipe.transform, draw.source, draw.extras, recipe, split, seed, sources,
        None if manifest is None else path, manifest,
    )


def _unpack(arrays: dict[str, np.ndarray], n: int) -> tuple[torch.Tensor, Draw]:
    """The images and the draw of the first ``n`` samples of a cached set (the inverse of :func:`_arrays`)."""
    tensors = {k: torch.from_numpy(v[:n]) for k, v in arrays.items()}
    extras = {k.removeprefix("extra_"): v for k, v in tensors.items() if k.startswith("extra_")}
    return tensors["images"], Draw(tensors["params"], tensors["source"], tensors["labels"], extras)


def _store(
    path: Path, key: str, identity: dict[str, Any], recipe: Recipe, images: torch.Tensor, draw: Draw
) -> dict[str, Any]:
    """Write a whole generated split to the cache at ``path``; returns its manifest."""
    arrays = _arrays(images, draw)
    manifest = {
        **identity,
        "key": key,
        "kind": recipe.kind,
        "torchstn_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "count": len(images),
        "stats": draw.stats,
        "files": {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in sorted(arrays.items())},
        "content_sha256": _content_hash(arrays),
    }
    _write_cache(path, arrays, manifest)
    return manifest
