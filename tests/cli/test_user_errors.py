"""Mistakes a user can make on the command line end in one ``torchstn: error:`` line, in-process and fast."""

import gzip
import struct
import zipfile

import numpy as np
import pytest

from torchstn.engine import _trainer


def _corrupt_mnist(directory):
    """Train files whose images are a gzip stream with garbage deflate data (zlib.error underneath)."""
    directory.mkdir()
    labels = (0x00000801).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    images = directory / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(b"")[:10] + b"\x07" + bytes(64))  # a gzip header, then a reserved block type
    return images


TRAIN = ["train", "--model", "cnn", "--data", "mnist", "--epochs", 1, "--device", "cpu", "--no-progress"]


def test_corrupt_gzip_names_the_file(tmp_path, cli):
    images = _corrupt_mnist(tmp_path / "data")
    line = cli(*TRAIN, "--data-dir", tmp_path / "data", "--out", tmp_path / "run").error_line()
    assert f"{images}: cannot be read as gzip (" in line and "corrupt or truncated" in line
    assert not (tmp_path / "run").exists()
    pytest.importorskip("matplotlib")
    preview = ["data", "preview", "rts", "--data-dir", tmp_path / "data", "--out", tmp_path / "p.png"]
    line = cli(*preview).error_line()
    assert f"{images}: cannot be read as gzip (" in line


def test_corrupt_npz_names_the_file(tmp_path, cli):
    (tmp_path / "data").mkdir()
    npz = tmp_path / "data" / "mnist.npz"
    np.savez_compressed(npz, x_train=np.zeros((4, 28, 28), np.uint8), y_train=np.arange(4, dtype=np.uint8))
    with zipfile.ZipFile(npz) as archive:
        start = archive.getinfo("x_train.npy").header_offset
    data = bytearray(npz.read_bytes())
    start += 30 + sum(struct.unpack("<HH", data[start + 26 : start + 30]))  # the local header, its name and extra field
    data[start] = 0x07  # the member's deflate data opens with a block of the reserved type: zlib.error
    npz.write_bytes(bytes(data))
    line = cli(*TRAIN, "--data-dir", tmp_path / "data", "--out", tmp_path / "run").error_line()
    assert f"{npz}: cannot be read as .npz (Error -3 while decompressing data: invalid block type)" in line


def test_a_misspelt_model_arg_fails_before_any_data_is_loaded(tmp_path, cli, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the model arguments were checked")

    monkeypatch.setattr(_trainer, "load_split", no_data)
    # st-cnn-aff (the default model) hands unknown arguments on to its CNN head
    line = cli("train", "--model-arg", "poool=2", "--out", tmp_path / "run").error_line()
    assert "model 'st-cnn-aff' got unknown argument 'poool'; it takes: " in line
    assert all(name in line for name in ("pool", "hidden", "channels", "loc_hidden", "num_transformers"))
    line = cli("train", "--model", "cnn", "--model-arg", "widht=3", "--out", tmp_path / "run").error_line()
    assert "'widht'" in line and "kernel_sizes" in line
    line = cli("train", "--model", "resnet9000", "--out", tmp_path / "run").error_line()
    assert "unknown model 'resnet9000'" in line and "st-cnn-aff" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--model", "cnn", "--model-arg", "num_classes=5"], "num_classes=5 is fewer than the 10 classes of mnist"),
    (["--model", "cnn", "--model-arg", "in_channels=3"], "in_channels=3, but mnist has 1 channel(s)"),
    (["--model", "st-cnn-aff", "--model-arg", "hidden=-5"], "hidden must be >= 0, got -5"),
    (["--model", "st-cnn-aff", "--model-arg", "channels=[-1,8]"], "channels[0] must be >= 1, got -1"),
    (["--model", "icstn-stn", "--data", "mnist-rts", "--ground-truth-init"],
     "ground_truth_init feeds icstn-stn the undistorted originals of mnist-rts, (1, 28, 28), but it was built for"),
])
def test_model_arguments_that_contradict_the_data_are_one_line_errors(args, fragment, cli, mnist_dir, tmp_path):
    """num_classes=5 on MNIST failed at the first step (cross-entropy's IndexError, after the run
    directory was written), a negative width with torch's "negative dimension" traceback, and
    --ground-truth-init on data whose originals are not the model's size with the model's
    shape error, naming neither the flag nor the originals."""
    data = [] if "--data" in args else ["--data", "mnist"]
    line = cli("train", *args, *data, "--data-dir", mnist_dir, "--train-limit", 64, "--test-limit", 32, "--steps", 1,
               "--no-progress", "--out", tmp_path / "run").error_line()
    assert fragment in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_epochs_and_steps_together_are_refused(tmp_path, cli):
    """--epochs beside --steps was ignored without a word (a run in steps ignores epochs)."""
    run = cli(*TRAIN, "--steps", 5, "--out", tmp_path / "run")
    assert run.status == 2 and "--steps: not allowed with argument --epochs" in run.err
    assert not (tmp_path / "run").exists()


def test_a_run_another_process_is_training_is_one_line_naming_it(tmp_path, cli, monkeypatch):
    """Two ``torchstn train`` on one --out both ended with status 0: the second rewrote the first's
    config.json and metrics.jsonl and both wrote checkpoints, a mixed run. The second is refused,
    naming the directory and the process that trains it, before it loads any data."""
    import subprocess
    import sys

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the run's lock was taken")

    monkeypatch.setattr(_trainer, "load_split", no_data)
    run = tmp_path / "run"
    hold = ("import sys\nfrom torchstn.engine import RunDir\n"
            "with RunDir(sys.argv[1]).locked():\n    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        line = cli(*TRAIN, "--out", run).error_line()
        assert line == (f"torchstn: error: {run} is being trained by another process (pid {holder.pid}): wait for it "
                        "to end, or choose another --out")
    finally:
        holder.communicate("")  # (its stdin closed: it lets go and ends)
    assert holder.returncode == 0 and not run.exists()  # (the holder made the directory for its lock, and removed it)


@pytest.mark.parametrize(("option", "expected"), [
    ("znormalize=1", "znormalize must be a bool, got int"),
    ("length=2.5", "length must be an int"),
])
def test_a_ucr_option_of_the_wrong_type_is_one_line_before_any_file(tmp_path, cli, option, expected):
    """A UCR set's options were checked by name only, so a wrong type reached load_ucr's TypeError:
    a traceback with exit status 1 from train and eval."""
    (tmp_path / "empty").mkdir()
    line = cli("train", "--model", "cnn1d", "--data", "ucr:GunPoint", "--data-option", option,
               "--data-dir", tmp_path / "empty", "--out", tmp_path / "run").error_line()
    assert line.startswith("torchstn: error: --data-option: ") and expected in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--optimizer", "adam", "--momentum", 0.5], "--momentum is SGD's; this run's optimizer is adam"),
    (["--schedule", "cosine", "--lr-gamma", 0.5], "--lr-gamma sets the step schedule; this run's schedule is cosine"),
    (["--schedule", "constant", "--lr-decay-every", 3], "--lr-decay-every sets the step schedule"),
    (["--data-seed", 5], "--data-seed seeds a distorted set's distortions; mnist is not distorted"),
])
def test_an_option_the_run_would_not_use_is_refused(tmp_path, cli, flags, expected):
    """These were recorded in config.json and ignored: the run claimed values it never used."""
    line = cli(*TRAIN, *flags, "--out", tmp_path / "run").error_line()
    assert expected in line, line
    assert not (tmp_path / "run").exists()


def test_an_empty_out_is_refused(tmp_path, cli, monkeypatch):
    """``--out ""`` trained into runs/MODEL-DATA, where the user had asked for somewhere else."""
    monkeypatch.chdir(tmp_path)
    line = cli(*TRAIN, "--out", "").error_line()
    assert "--out is empty" in line
    assert not (tmp_path / "runs").exists()


def test_a_config_fields_error_names_the_flag(tmp_path, cli):
    """TrainConfig's checks name its fields (lr_decay_every); the line now starts with the flag typed."""
    line = cli(*TRAIN, "--schedule", "step", "--lr-decay-every", 0, "--out", tmp_path / "run").error_line()
    assert line == "torchstn: error: --lr-decay-every: lr_decay_every must be >= 1, got 0"


def test_a_failed_rename_names_both_paths():
    """An OSError of a rename names a source and a target; the line named the source alone (a
    temporary directory, already removed, where the target was in the way)."""
    from torchstn.cli._common import CLIError, user_errors

    with pytest.raises(CLIError, match=r"^/cache/\.set\.tmp -> /cache/set: Not a directory$"):
        with user_errors():
            raise NotADirectoryError(20, "Not a directory", "/cache/.set.tmp", None, "/cache/set")
