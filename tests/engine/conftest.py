"""Tiny in-memory datasets with the attributes the engine reads from torchstn.data datasets."""

import pytest
import torch
from torch.utils.data import TensorDataset


class ShapesDataset(TensorDataset):
    """Four classes of bright shapes (square, bar, cross, frame) at random places and sizes."""

    def __init__(self, n: int, size: int = 28, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 4, (n,), generator=g)
        images = torch.zeros(n, 1, size, size)
        for i, label in enumerate(labels.tolist()):
            s = int(torch.randint(6, 11, (1,), generator=g))
            r, c = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
            patch = torch.zeros(s, s)
            if label == 0:
                patch[:] = 1
            elif label == 1:
                patch[:, s // 2 - 1 : s // 2 + 1] = 1
            elif label == 2:
                patch[s // 2 - 1 : s // 2 + 1] = 1
                patch[:, s // 2 - 1 : s // 2 + 1] = 1
            else:
                patch[[0, -1]] = 1
                patch[:, [0, -1]] = 1
            images[i, 0, r : r + s, c : c + s] = patch
        super().__init__(images, labels)
        self.num_classes = 4
        self.input_shape = (1, size, size)


@pytest.fixture(scope="session")
def shapes():
    return ShapesDataset(256, seed=0), ShapesDataset(128, seed=1)
