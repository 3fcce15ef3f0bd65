"""MNIST-format loading and the distorted-MNIST data sets of the STN papers (layer 5).

Loading: :func:`load_mnist` reads the four IDX files (gzipped or not) or a Keras-style
``mnist.npz`` from ``root``, ``$TORCHSTN_DATA`` or the user cache, downloading them
with SHA-256 checks where they are missing. Distortions: :func:`distorted_mnist`
generates a split of ``"r"``, ``"rts"``, ``"p"``, ``"e"``, ``"cluttered"``,
``"addition"``, ``"perturbed"`` or ``"rotated"`` with the ground-truth parameters of
every sample, batched through :func:`torchstn.warp`, seeded and cached.
Training: :func:`get_dataset` returns a :class:`torch.utils.data.Dataset` by name.
"""

from __future__ import annotations

from torchstn.data._datasets import (
    DATASETS,
    PSTN_SIZES,
    MNISTDataset,
    OnlineDistortedMNIST,
    get_dataset,
    list_datasets,
    pstn_fold,
)
from torchstn.data._generate import DistortedMNIST, cache_path, distorted_mnist
from torchstn.data._mnist import MIRRORS, MNIST_FILES, default_cache_dir, download_mnist, find_mnist, load_mnist, read_idx
from torchstn.data._preview import preview
from torchstn.data._recipes import KINDS, Recipe, get_recipe

__all__ = [
    "DATASETS",
    "KINDS",
    "MIRRORS",
    "MNIST_FILES",
    "PSTN_SIZES",
    "DistortedMNIST",
    "MNISTDataset",
    "OnlineDistortedMNIST",
    "Recipe",
    "cache_path",
    "default_cache_dir",
    "distorted_mnist",
    "download_mnist",
    "find_mnist",
    "get_dataset",
    "get_recipe",
    "list_datasets",
    "load_mnist",
    "preview",
    "pstn_fold",
    "read_idx",
]
