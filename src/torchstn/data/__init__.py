"""MNIST-format loading and the distorted-MNIST data sets of the STN papers (layer 5).

Loading: :func:`load_mnist` reads the four IDX files (gzipped or not) or a Keras-style
``mnist.npz`` from ``root``, ``$TORCHSTN_DATA`` or the user cache, downloading them
with SHA-256 checks where they are missing. Distortions: :func:`distorted_mnist`
generates a split of ``"r"``, ``"rts"``, ``"p"``, ``"e"``, ``"cluttered"``,
``"addition"``, ``"perturbed"`` or ``"rotated"`` with the ground-truth parameters of
every sample, batched through :func:`torchstn.warp`, seeded and cached.
``"3d"`` is the STN paper's 3-D set (digits extruded into 60x60x60 volumes), rendered
batch by batch. Other data: :func:`load_cifar10` reads the python-version CIFAR-10
archive, :func:`load_ucr` the UCR time-series archive (``.tsv`` and ``.ts``, including
the sets the ``aeon`` package ships). Training: :func:`get_dataset` returns a
:class:`torch.utils.data.Dataset` by name (``"mnist-rts"``, ``"mnist-3d"``,
``"cifar10"``, ``"ucr:GunPoint"``, ...).
"""

from __future__ import annotations

from torchstn.data._cifar import CIFAR10_CLASSES, CIFAR10_URL, load_cifar10
from torchstn.data._datasets import (
    DATASETS,
    DISTORTED,
    PSTN_SIZES,
    UCR_PREFIX,
    MNISTDataset,
    OnlineDistortedMNIST,
    TimeSeriesDataset,
    check_dataset_options,
    data_law,
    get_dataset,
    list_datasets,
    pstn_fold,
)
from torchstn.data._generate import DistortedMNIST, cache_path, distorted_mnist
from torchstn.data._mnist import MIRRORS, MNIST_FILES, default_cache_dir, download_mnist, find_mnist, load_mnist, read_idx
from torchstn.data._preview import preview
from torchstn.data._recipes import KINDS, Recipe, get_recipe
from torchstn.data._ucr import UCR_PADDINGS, UCR_URL, UCRSplit, load_ucr, shipped_ucr_dir, ucr_datasets

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "DATASETS",
    "DISTORTED",
    "KINDS",
    "MIRRORS",
    "MNIST_FILES",
    "PSTN_SIZES",
    "DistortedMNIST",
    "MNISTDataset",
    "OnlineDistortedMNIST",
    "Recipe",
    "TimeSeriesDataset",
    "UCRSplit",
    "UCR_PADDINGS",
    "UCR_PREFIX",
    "UCR_URL",
    "cache_path",
    "check_dataset_options",
    "data_law",
    "default_cache_dir",
    "distorted_mnist",
    "download_mnist",
    "find_mnist",
    "get_dataset",
    "get_recipe",
    "list_datasets",
    "load_cifar10",
    "load_mnist",
    "load_ucr",
    "preview",
    "pstn_fold",
    "read_idx",
    "shipped_ucr_dir",
    "ucr_datasets",
]
