"""How far an ideal transformer takes the CNN: the classifier trained on distorted MNIST
digits undistorted by their own ground truth.

Each image (``--kind``: ``rts``, ``r`` or ``p``, whose maps have an inverse) is warped by
the inverse of the map that rendered it, back to the digit's 28x28 frame (``--size 28``,
the classifier at ``pool=1``) or, for RTS, to the 42x42 output an ST-CNN samples and then
average-pools by 2 (``--size 42 --pool 2``, what the classifier of ``stn-table1``'s ST-CNN
sees). What separates the result from the same CNN on the original MNIST digits
(``torchstn train --model cnn --data mnist``) is what the rendering and the resampling
lose; what separates the ST-CNN's error from it is what the learned transformer leaves
undone. The training set is the fixed one, or with ``--online`` fresh distortions every
epoch, each undone by its own ground truth (as the ``long`` budget's ST-CNNs train). The run
directory's ``config.json`` names the distorted set (the source of the images); ``torchstn
eval`` on it would read the distorted images, not these::

    python benchmarks/ideal_transformer.py --data-dir ../shared/data/mnist --out runs/x/rts-ideal-28
    python benchmarks/ideal_transformer.py --size 42 --pool 2 --data-dir ../shared/data/mnist --out runs/x/rts-ideal-42p2
    python benchmarks/ideal_transformer.py --kind p --data-dir ../shared/data/mnist --out runs/x/p-ideal-28
    python benchmarks/ideal_transformer.py --size 42 --pool 2 --online --steps 28110 --data-dir ../shared/data/mnist \
        --out runs/x/rts-ideal-42p2-online
    python benchmarks/ideal_transformer.py --size 42 --pool 2 --online --steps 28110 --label-smoothing 0.1 \
        --data-dir ../shared/data/mnist --out runs/x/rts-ideal-42p2-online-ls01   # the stn-table1 long recipe
    python benchmarks/ideal_transformer.py --kind p --online --label-smoothing 0.1 --supersample 4 \
        --data-dir ../shared/data/mnist --out runs/x/p-ideal-online-ls01-ss4   # stn-table1's P column since 2026-12-03
    python benchmarks/ideal_transformer.py --kind addition --model fcn --online --steps 93700 \
        --data-dir ../shared/data/mnist --out runs/x/addition-ideal-fcn   # an ideal 2xST-FCN, stn-addition's long
    python benchmarks/ideal_transformer.py --kind addition --model fcn --online --steps 93700 --only-shift \
        --data-dir ../shared/data/mnist --out runs/x/addition-centred-fcn   # transformers that only centre

``--kind addition`` is MNIST addition's two RTS digits: transformer ``k`` of an ideal 2xST-FCN
warps both channels by the inverse of digit ``k``'s similarity to 28x28, the two outputs side
by side (four channels), for the row's classifier (``--model fcn``).
"""

from __future__ import annotations

import argparse

import torch

import torchstn as stn
from torchstn.data import distorted_mnist
from torchstn.engine import TrainConfig, train


def undone(images: torch.Tensor, params: torch.Tensor, kind: str, size: int, only_shift: bool = False) -> torch.Tensor:
    """``images`` warped back by the inverse of the maps ``params`` that rendered them, to ``size`` x ``size``.

    For ``addition`` (``params``: each channel's similarity, ``(N, 8)``) an ideal 2xST-FCN's
    output: transformer ``k`` warps both channels by the inverse of digit ``k``'s map, the
    two outputs side by side, ``(N, 4, size, size)``. ``only_shift`` (``addition``): transformer
    ``k`` only centres digit ``k``, a ``size``-pixel window of the canvas at its resolution around
    the digit's centre, its rotation and scale left as drawn.
    """
    if kind == "addition":
        return torch.cat([undone(images, params[:, 4 * k : 4 * k + 4], "rts", size, only_shift) for k in (0, 1)], 1)
    if only_shift:  # the canvas point the digit's centre is drawn at: the map sends it to the digit's (0, 0)
        m = stn.Similarity().matrix(params.double())[:, :2]
        centre = -torch.linalg.solve(m[:, :, :2], m[:, :, 2:])
        zoom = torch.eye(2, dtype=torch.float64).expand(len(params), -1, -1) * size / images.shape[-1]
        return stn.warp(images, torch.cat([zoom, centre], 2).float(), stn.Affine(), size=(size, size))
    transform = stn.Similarity() if kind in ("r", "rts") else stn.Projective()
    inverse = transform.inverse(params.double()).float()
    return stn.warp(images, inverse, transform, size=(size, size))


class Undistorted(torch.utils.data.TensorDataset):
    """The images of a distorted MNIST split warped back by their ground truth, with their labels."""

    def __init__(self, kind: str, split: str, root: str, size: int, options: dict | None = None,
                 only_shift: bool = False) -> None:
        ds = distorted_mnist(kind, split=split, root=root, **(options or {}))
        chunks = [undone(ds.images[i : i + 4096].float().div(255), ds.params[i : i + 4096], kind, size, only_shift)
                  for i in range(0, len(ds.images), 4096)]
        super().__init__(torch.cat(chunks), ds.labels)
        self.input_shape, self.num_classes = tuple(self.tensors[0].shape[1:]), 19 if kind == "addition" else 10


class OnlineUndistorted(torch.utils.data.Dataset):
    """Fresh distortions every epoch (an online distorted set), each warped back by its own ground truth."""

    def __init__(self, kind: str, root: str, size: int, options: dict | None = None, only_shift: bool = False) -> None:
        self.online = stn.data.get_dataset(f"mnist-{kind}", "train", root=root, online=True, **(options or {}))
        self.kind, self.size, self.only_shift = kind, size, only_shift
        channels = 4 if kind == "addition" else 1
        self.input_shape, self.num_classes = (channels, size, size), self.online.num_classes
        self.params = self.online.params

    def set_epoch(self, epoch: int) -> None:
        self.online.set_epoch(epoch)
        self.params = self.online.params  # (this epoch's, every sample's: addition has no ground_truth)

    def __len__(self) -> int:
        return len(self.online)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        items = self.online.__getitems__(indices)
        images, labels = torch.stack([image for image, _ in items]), [label for _, label in items]
        back = undone(images, self.params[torch.as_tensor(indices)], self.kind, self.size, self.only_shift)
        return list(zip(back.unbind(0), labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--kind", default="rts", choices=("rts", "r", "p", "addition"), help="the distortion undone")
    parser.add_argument("--model", default="cnn", choices=("cnn", "fcn"),
                        help="the classifier (fcn with --kind addition: an ideal 2xST-FCN)")
    parser.add_argument("--size", type=int, default=28, help="side of the undistorted images")
    parser.add_argument("--pool", type=int, default=1, help="the CNN's average-pooling of its input")
    parser.add_argument("--steps", type=int, default=18740, help="default: 20 epochs of batch 64")
    parser.add_argument("--online", action="store_true", help="fresh distortions every epoch (each undone)")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="as torchstn train's (0.1: the stn-table1 long recipe)")
    parser.add_argument("--supersample", type=int, default=1,
                        help="the distorted images rendered with area antialiasing (4: stn-table1's RTS and P)")
    parser.add_argument("--moved", choices=("source", "target"), default=None,
                        help="with --kind p: the frame its corners move in (default: the recipe's, source; "
                             "target: its law until 2026-12-05)")
    parser.add_argument("--only-shift", action="store_true",
                        help="with --kind addition: each transformer only centres its digit (a window of the canvas "
                             "at its resolution), the rotation and scale left as drawn")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.moved is not None and args.kind != "p":
        parser.error("--moved is P's law; the other distortions have none")
    if args.only_shift and args.kind != "addition":
        parser.error("--only-shift is an ideal 2xST-FCN's (--kind addition)")
    options = {"supersample": args.supersample} if args.supersample > 1 else {}
    if args.moved is not None:
        options["moved"] = args.moved
    if args.online:
        train_set = OnlineUndistorted(args.kind, args.data_dir, args.size, options, args.only_shift)
    else:
        train_set = Undistorted(args.kind, "train", args.data_dir, args.size, options, args.only_shift)
    test_set = Undistorted(args.kind, "test", args.data_dir, args.size, options, args.only_shift)
    config = TrainConfig(
        model=args.model, model_args={"pool": args.pool}, data=f"mnist-{args.kind}", optimizer="adam", lr=2e-3,
        batch_size=64,
        warmup=0.05, schedule="cosine", steps=args.steps, channels_last=True, online=args.online,
        label_smoothing=args.label_smoothing, data_options=options,
    )
    train(config, args.out, train_set=train_set, test_set=test_set, progress=False)


if __name__ == "__main__":
    main()
