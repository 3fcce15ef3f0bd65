"""The experiments beyond images: ``pstn-ucr`` (UCR series), ``stn-3d`` (volumes) and ``seed-cifar10``,
each at its quick budget end to end on tiny data (records, report, figures), and their recipes."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from tests._helpers import MNIST_DIR, needs_mnist
from torchstn.data import shipped_ucr_dir
from torchstn.reproduce import Results, get_experiment, plan, run_experiment, write_figure, write_report
from torchstn.reproduce._experiments import PSTN_UCR_PAPER_SETS
from torchstn.reproduce._report import figure_path

needs_aeon = pytest.mark.skipif(shipped_ucr_dir() is None,
                                reason="aeon is not installed (pip install --no-deps aeon ships the UCR sets)")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No test here reads or writes the user's cache or follows their TORCHSTN_DATA."""
    monkeypatch.setenv("TORCHSTN_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("TORCHSTN_DATA", raising=False)


def _run(cells, tmp_path, data_dir=None):
    """Train ``cells`` as ``torchstn reproduce`` does (a figure after each), then write the report."""
    experiment = cells[0].experiment
    out, runs = tmp_path / "results", tmp_path / "runs"
    results = Results(out, experiment.name)
    records = run_experiment(cells, results, runs, data_dir=data_dir, device="cpu", progress=False, log=lambda _: None,
                             after_cell=lambda cell, record: write_figure(cell, record, out, data_dir=data_dir))
    text = write_report(experiment, results, out, cells[0].budget).read_text()
    return records, text, out


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_budget_sets_model_arguments_under_the_column_and_the_row():
    experiment = get_experiment("pstn-ucr")
    italy = experiment.recipe("standard", experiment.row("pstn-cpab"), experiment.column("italypower"))
    assert italy["model_args"] == {"width": 0.5, "conv_padding": "same", "kl_weight": 1e-4}
    assert experiment.recipe("paper", experiment.row("cnn"), experiment.column("gunpoint"))["model_args"] == {}
    osuleaf = experiment.recipe("standard", experiment.row("cnn"), experiment.column("osuleaf"))
    assert osuleaf["epochs"] == 15 and osuleaf["batch_size"] == 16


def test_pstn_ucr_follows_the_authors_recipe_and_names_the_papers_sets():
    experiment = get_experiment("pstn-ucr")
    paper = plan(experiment, "paper", only=["pstn-cpab"], datasets=["gunpoint"])
    assert len(paper) == 5  # five seeds, as the authors' five folds
    config = paper[0].config
    assert (config["optimizer"], config["lr"], config["loc_lr_mult"], config["batch_size"], config["epochs"]) == (
        "adam", 1e-3, 0.1, 16, 200)
    assert {c.data for c in experiment.columns} >= {"ucr:GunPoint", "ucr:ArrowHead", "ucr:OSULeaf",
                                                    "ucr:ItalyPowerDemand"}
    notes = " ".join(experiment.notes)
    assert all(name in notes for name in PSTN_UCR_PAPER_SETS) and "stand-ins" in notes
    assert len(plan(experiment, "standard")) == 4 * 5 * 3


@needs_aeon
def test_pstn_ucr_quick_end_to_end(tmp_path):
    from torchstn.engine import evaluate, load_model, load_split

    experiment = get_experiment("pstn-ucr")
    cells = plan(experiment, "quick", datasets=["gunpoint", "italypower"], limit=32)
    records, text, out = _run(cells, tmp_path)
    assert len(records) == 10 and all({"nll", "ece"} <= set(r) for r in records)
    # the recorded calibration is the saved model's (the CNN is deterministic in eval mode)
    cnn = next(r for r in records if r["row"] == "cnn" and r["column"] == "gunpoint")
    model, config, _ = load_model(cnn["run"], "last")
    metrics = evaluate(model, load_split(config, "test"))
    assert cnn["nll"] == pytest.approx(metrics["nll"], rel=1e-5) and cnn["ece"] == pytest.approx(metrics["ece"], abs=1e-6)
    assert cnn["error"] == pytest.approx(100 * metrics["error"])
    # the report: the calibration table, the stand-in statement, the headline figure of sampled warps
    assert "### Accuracy and calibration, budget `quick`" in text
    assert f"| CNN | {100 - cnn['error']:.2f} | {cnn['nll']:.3f} | {cnn['ece']:.3f} |" in text
    assert "stand-ins" in text and "FaceAll" in text
    head = figure_path(out, "pstn-ucr", "quick", "pstn-cpab", "gunpoint")
    assert _is_png(head) and f"]({head.relative_to(out).as_posix()})" in text
    assert "test series (black) with the warps" in text
    assert not figure_path(out, "pstn-ucr", "quick", "cnn", "gunpoint").exists()  # no transformer, no figure


@needs_mnist
def test_stn_3d_quick_end_to_end(tmp_path):
    experiment = get_experiment("stn-3d")
    records, text, out = _run(plan(experiment, "quick"), tmp_path, data_dir=str(MNIST_DIR))
    assert [r["row"] for r in records] == ["cnn-3d", "st-cnn-3d-aff"]
    assert [r["config"]["model_args"] for r in records] == [{"pool": 2}, {"pool": 2, "loc_batch_norm": True}]
    assert all(r["steps"] == 6 for r in records)
    assert "3-D ST-CNN (Affine3D, then projection) on MNIST 3-D" in text and "Accuracy and calibration" in text
    assert _is_png(figure_path(out, "stn-3d", "quick", "st-cnn-3d-aff", "3d"))
    assert "after the 3-D transformer" in text


def _cifar_archive(root, train=48, test=24):
    """A tiny ``cifar-10-python.tar.gz`` of the real format: pickled dicts of uint8 rows and int labels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = {f"data_batch_{i}": train // 5 + (i <= train % 5) for i in range(1, 6)} | {"test_batch": test}
    for name, n in sizes.items():
        batch = {b"labels": rng.integers(0, 10, n).tolist(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()  # only the archive is left
    return root


def test_seed_cifar10_quick_end_to_end_on_a_tiny_archive(tmp_path):
    experiment = get_experiment("seed-cifar10")
    assert experiment.paper == {("st-cnn-cifar", "cifar10"): 34.3}
    paper = plan(experiment, "paper")[0].config
    assert (paper["optimizer"], paper["lr"], paper["momentum"], paper["batch_size"], paper["epochs"]) == (
        "sgd", 0.01, 0.0, 64, 50)
    data = _cifar_archive(tmp_path / "data")
    records, text, out = _run(plan(experiment, "quick"), tmp_path, data_dir=str(data))
    (record,) = records
    assert record["steps"] == 8 and record["paper"] == 34.3 and 0.0 <= record["error"] <= 100.0
    assert "ST-CNN (seed notebook)" in text and "34.3" in text
    assert _is_png(figure_path(out, "seed-cifar10", "quick", "st-cnn-cifar", "cifar10"))


def test_seed_cifar10_without_the_data_names_the_files_and_where(tmp_path):
    cells = plan(get_experiment("seed-cifar10"), "quick")
    with pytest.raises(FileNotFoundError) as err:
        _run(cells, tmp_path, data_dir=str(tmp_path))
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message and str(tmp_path) in message


@needs_aeon
def test_the_series_figure_draws_sampled_warps(tmp_path):
    """A P-STN's figure holds its test samples of θ: the warped curves differ from each other."""
    from torchstn.reproduce._figures import WARPS, _warps

    torch.manual_seed(0)
    model = __import__("torchstn").create_model("pstn-cnn1d-cpab", input_size=150, width=0.05, init_scale=0.3).eval()
    x = torch.randn(2, 1, 150)
    warped, maps = _warps(model.transformers[0], x, WARPS)
    assert warped.shape == (WARPS, 2, 1, 150) and maps.shape == (WARPS, 2, 150)
    assert not torch.allclose(warped[0], warped[1])
    assert model.transformers[0].test_samples == 10  # restored
    assert (maps.diff(dim=-1) > 0).all()  # a CPAB warp is increasing


def test_the_figures_of_series_and_volumes_start_where_asked():
    """``torchstn visualize --start`` for series and volumes: one item of each class in turn by default
    (the reports' figures), the items from ``start`` in order when it is given (it was ignored)."""
    from torchstn.reproduce._figures import _pick

    class Items:
        labels = torch.tensor([0, 0, 0, 1, 1, 1])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return torch.full((1, 3), float(i)), int(self.labels[i])

    def drawn(num, start=None):
        x, y = _pick(Items(), num, start=start)
        assert y.tolist() == Items.labels[x[:, 0, 0].long()].tolist()
        return x[:, 0, 0].long().tolist()

    assert drawn(3) == [0, 3, 1]
    assert drawn(3, start=1) == [1, 2, 3]
    assert drawn(4, start=4) == [4, 5]  # to the end of the test set


@needs_mnist
def test_a_sampling_models_report_figure_is_the_same_every_time(tmp_path):
    """write_figure drew a P-STN outside the run's evaluation draws (visualize draws inside them):
    each refresh of a report drew other θ samples and other predictions."""
    cells = [c for c in plan(get_experiment("pstn-subsets"), "quick") if c.row.model == "p-stn"][:1]
    records, _, out = _run(cells, tmp_path, data_dir=MNIST_DIR)
    path = figure_path(out, cells[0].experiment.name, "quick", cells[0].row.key, cells[0].column.key)
    first = path.read_bytes()
    torch.manual_seed(12345)  # (another state of torch's generator: the figure must not depend on it)
    write_figure(cells[0], records[0], out, data_dir=MNIST_DIR)
    assert path.read_bytes() == first
