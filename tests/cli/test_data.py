"""``torchstn data``: list, preview and generate."""

import pytest
import torch


def test_cli_preview_and_generate(cli, mnist_dir, tmp_path):
    out = tmp_path / "fig.png"
    run = cli("data", "preview", "cluttered", "--out", out, "-n", "4", "--data-dir", mnist_dir)
    assert run.status == 0, run.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = cli("data", "generate", "mnist-r", "--split", "test", "--seed", "2", "--quiet",
              "--data-dir", mnist_dir, "--cache-dir", tmp_path, "--option", "angle=30")
    assert run.status == 0, run.err
    assert "mnist-r test: 10000 images 1x28x28" in run.out and str(tmp_path / "distorted") in run.out
    run = cli("data", "list")
    assert run.status == 0 and "mnist-perturbed" in run.out


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """The title of every figure made while the test runs (the PNG holds it only as pixels)."""
    from matplotlib.figure import Figure

    seen: list[str] = []
    suptitle = Figure.suptitle

    def record(fig, text, **kwargs):
        seen.append(" ".join(text.split()))  # unwrapped
        return suptitle(fig, text, **kwargs)

    monkeypatch.setattr(Figure, "suptitle", record)
    return seen


def test_preview_title_says_the_options_given(cli, mnist_dir, tmp_path, titles):
    """The title gave the recipe's default law whatever --option said: "on 60x60" over 36x36
    images, "N(0, 1.5 px)" for sigma=2.5."""
    from torchstn.data import distorted_mnist

    run = cli("data", "preview", "cluttered", "--option", "canvas=36", "--option", "patches=3", "-n", 2,
              "--data-dir", mnist_dir, "--out", tmp_path / "c.png")
    assert run.status == 0, run.err
    side = distorted_mnist("cluttered", "train", mnist_dir, limit=1, cache=False, canvas=36).images.shape[-1]
    assert f"random position on {side}x{side} plus 3 random 6x6 patches" in titles[-1]
    assert f"; 1x{side}x{side}," in titles[-1]
    run = cli("data", "preview", "e", "--option", "sigma=2.5", "-n", 2, "--data-dir", mnist_dir,
              "--out", tmp_path / "e.png")
    assert run.status == 0, run.err
    assert "moved by N(0, 2.5 px)" in titles[-1]
    run = cli("data", "preview", "r", "-n", 2, "--data-dir", mnist_dir, "--out", tmp_path / "r.png")
    assert run.status == 0, run.err
    assert "rotation U(-90°, 90°) about the centre, 28x28" in titles[-1]  # the defaults, as before
    # the list, which has no options, states the defaults
    assert "digit at a random position on 60x60 plus 6 random 6x6 patches" in cli("data", "list").out


def test_preview_of_a_canvas_smaller_than_the_original_digit(cli, mnist_dir, tmp_path):
    """The original 28x28 digit was centred on the canvas's rows, which a canvas of 20 (any
    canvas >= 8 is a valid option) does not have: a traceback instead of the figure."""
    from torchstn.data import distorted_mnist
    from torchstn.data._preview import sample_mosaic

    data = distorted_mnist("r", "test", mnist_dir, limit=1, cache=False, canvas=20)
    mosaic = sample_mosaic(data, 0)
    assert mosaic.shape[0] == 28 + 2  # the tallest panel, framed
    torch.testing.assert_close(mosaic[1:29, 1:29], data.originals()[0].float() / 255)
    run = cli("data", "preview", "r", "--option", "canvas=20", "-n", 2, "--data-dir", mnist_dir,
              "--out", tmp_path / "r.png")
    assert run.status == 0, run.err


def test_cli_errors_are_one_line(cli, mnist_dir, tmp_path):
    line = cli("data", "preview", "r", "--data-dir", mnist_dir, "--option", "sigma=2", "--out", tmp_path / "x.png",
               ).error_line()
    assert "unknown option" in line
    line = cli("data", "preview", "r", "--data-dir", mnist_dir, "-n", 100000, "--out", tmp_path / "x.png").error_line()
    assert "-n must be 1 to 256" in line  # (once drew for minutes)
    line = cli("data", "preview", "r", "--data-dir", mnist_dir, "-n", 0, "--out", tmp_path / "x.png").error_line()
    assert line.endswith("-n must be 1 to 256 (one figure of samples), got 0")  # (the same flag's other end was "n must be >= 1")
    line = cli("data", "preview", "r", "--data-dir", mnist_dir, "--columns", -1, "--out", tmp_path / "x.png").error_line()
    assert "columns must be >= 1, got -1" in line  # (once matplotlib's "figure size must be positive")
    line = cli("data", "preview", "r", "--data-dir", mnist_dir, "-n", 2, "--out", tmp_path).error_line()
    assert f"{tmp_path} is a directory" in line  # (once wrote a PNG beside it and named the directory)
    line = cli("data", "generate", "r", "--data-dir", tmp_path / "none", "--quiet").error_line()
    assert "t10k-images-idx3-ubyte.gz" in line
    one = mnist_dir / "t10k-images-idx3-ubyte.gz"  # (said "does not exist")
    line = cli("data", "generate", "r", "--data-dir", one, "--quiet").error_line()
    assert line == f"torchstn: error: --data-dir {one} is a file: give the directory that holds the data ({mnist_dir}?)"
    empty = tmp_path / "empty"
    empty.mkdir()  # a directory without MNIST: the loader says which files to put where
    line = cli("data", "generate", "r", "--data-dir", empty, "--quiet").error_line()
    assert "t10k-images-idx3-ubyte.gz" in line and str(empty) in line
    # a cache that cannot be written is said before the rendering (it failed after it, minutes in)
    line = cli("data", "generate", "r", "--data-dir", mnist_dir, "--cache-dir", "/proc/torchstn", "--quiet").error_line()
    assert "cannot write the cache in /proc/torchstn" in line and "--cache-dir" in line
    run = cli("data", "preview", "twirl")
    assert run.status == 2 and "unknown kind 'twirl'" in run.err  # argparse's error (exit status 2)
    # mnist-3d is rendered on the fly: the Python call's hint (limit=) has no flag here
    line = cli("data", "generate", "mnist-3d", "--data-dir", mnist_dir, "--quiet").error_line()
    assert "training renders it batch by batch" in line and "limit=" not in line
