"""``torchstn train`` on UCR series and the --data / --data-dir checks for data beyond MNIST."""

import json

import pytest

from torchstn.data import shipped_ucr_dir

needs_aeon = pytest.mark.skipif(shipped_ucr_dir() is None,
                                reason="aeon is not installed (pip install --no-deps aeon ships the UCR sets)")


@needs_aeon
def test_train_a_1d_transformer_on_gunpoint(cli, tmp_path):
    out = tmp_path / "gp"
    run = cli("train", "--data", "ucr:GunPoint", "--model", "st-cnn1d-aff", "--steps", 5, "--batch-size", 16,
              "--model-arg", "width=0.1", "--optimizer", "adam", "--lr", 1e-3, "--threads", 1, "--no-progress",
              "--out", out)
    assert run.status == 0, run.err
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"] == {"width": 0.1, "in_channels": 1, "input_size": [150], "num_classes": 2}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 5 and "test_ece" in history[-1]
    assert "50 train / 150 test" in run.out
    # visualize draws the series and their warps (it crashed: "not enough values to unpack")
    shown = cli("visualize", out, "--num", 3, "--out", tmp_path / "warps")
    assert shown.status == 0, shown.err
    assert f"wrote {tmp_path / 'warps.png'}" in shown.out and (tmp_path / "warps.png").read_bytes()[:4] == b"\x89PNG"
    assert "draws image runs only; this run's inputs are series" in cli("visualize", out, "--errors").error_line()


@needs_aeon
def test_ucr_names_are_checked_where_they_can_be(cli, tmp_path):
    line = cli("train", "--data", "ucr:GunPont", "--model", "cnn1d").error_line()
    assert "unknown dataset 'ucr:GunPont'" in line and "ucr:GunPoint" in line and "--data-dir" in line
    assert "names no UCR data set" in cli("train", "--data", "ucr:").error_line()
    # with --data-dir any name passes the check: the loader looks there and names the files it needs
    (tmp_path / "ucr").mkdir()
    line = cli("train", "--data", "ucr:MySet", "--data-dir", tmp_path / "ucr", "--model", "cnn1d",
               "--out", tmp_path / "run").error_line()
    assert "MySet_TRAIN.tsv" in line and str(tmp_path / "ucr") in line


def test_a_missing_data_dir_says_what_to_put_there(cli, tmp_path):
    nowhere = tmp_path / "nowhere"
    cifar = cli("train", "--data", "cifar10", "--data-dir", nowhere).error_line()
    assert f"data directory {nowhere} does not exist" in cifar and "cifar-10-python.tar.gz" in cifar
    ucr = cli("train", "--data", "ucr:GunPoint", "--data-dir", nowhere).error_line()
    assert "GunPoint_TRAIN.tsv" in ucr and "GunPoint/" in ucr
    default = cli("train", "--data-dir", nowhere).error_line()
    assert "train-images-idx3-ubyte.gz" in default and "CIFAR-10" in default and "ucr:<Name>" in default


def test_the_cifar_archive_itself_is_a_data_dir(cli, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not really an archive")
    line = cli("train", "--data", "cifar10", "--data-dir", archive, "--model", "st-cnn-cifar",
               "--out", tmp_path / "run").error_line()
    assert "does not exist" not in line and str(archive) in line  # passed the check, the reader refused it


def test_visualize_refuses_a_volume_run_without_a_transformer(cli, tmp_path, mnist_dir):
    """cnn-3d has no transformer, but every volume classifier has transform_volume (the
    identity there): visualize drew its input volumes as "transformed" views."""
    out = tmp_path / "c3"
    run = cli("train", "--model", "cnn-3d", "--data", "mnist-3d", "--data-dir", mnist_dir, "--model-arg", "pool=2",
              "--train-limit", 16, "--test-limit", 8, "--batch-size", 8, "--steps", 1, "--threads", 1,
              "--no-progress", "--out", out)
    assert run.status == 0, run.err
    line = cli("visualize", out, "--out", tmp_path / "views").error_line()
    assert "cnn-3d has no 3-D transformer: visualize draws a transformer's views of volumes" in line
    assert not (tmp_path / "views.png").exists()
