"""A run records the law its data were drawn by; eval, visualize and resume hold it to that law.

A recipe's default changed under runs before (``p`` on 2026-12-05): ``torchstn eval`` of an
older run then measured it on the new law without a word. The checkpoints now say which law
(kind, recipe version, every option), and a run is measured on it or refused.
"""

import json
import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import torchstn as stn
from torchstn.engine import TrainConfig, read_checkpoint, run_data, train

_DROP = object()


@pytest.fixture(scope="module")
def tiny(mnist_dir):
    return ["--data-dir", mnist_dir, "--train-limit", 128, "--test-limit", 128, "--batch-size", 32, "--no-progress"]


@pytest.fixture(scope="module")
def p_run(cli, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "p"
    run = cli("train", "--model", "cnn", "--data", "mnist-p", "--epochs", 1, "--out", out, *tiny)
    assert run.status == 0, run.err
    return out


def _recorded_as(run, out, law):
    """A copy of ``run`` at ``out`` whose checkpoints record ``law`` (``_DROP``: none, as runs before 2026-12-05)."""
    shutil.copytree(run, out)
    for path in (out / "checkpoints").glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        metadata.pop("data_law")
        if law is not _DROP:
            metadata["data_law"] = json.dumps(law)
        save_file(tensors, str(path), metadata=metadata)
    return out


def _loss(cli, run, mnist_dir, *extra):
    result = cli("eval", run, "--data-dir", mnist_dir, "--limit", 128, "--json", *extra)
    assert result.status == 0, result.err
    return json.loads(result.out)["loss"], result.err


def test_a_run_records_its_law_and_is_measured_on_it_without_a_note(cli, p_run, mnist_dir):
    for which in ("best", "last"):
        _, _, info = read_checkpoint(p_run / "checkpoints" / f"{which}.safetensors")
        assert info["data_law"] == stn.data.data_law("mnist-p")
        assert read_checkpoint(p_run / "checkpoints" / f"{which}.safetensors", tensors=False)[::2] == ({}, info)
    assert info["data_law"]["version"] == 2 and info["data_law"]["options"]["moved"] == "source"
    loss, err = _loss(cli, p_run, mnist_dir)
    logged = json.loads((p_run / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]
    assert loss == pytest.approx(logged, rel=1e-5)
    assert "note" not in err


def test_a_run_of_an_earlier_version_is_measured_on_its_own_law(cli, p_run, mnist_dir, tmp_path):
    """A ``p`` run of recipe version 1 (the canvas frame) is measured as ``--data-option moved=target``
    measures the same weights, not on version 2's digits."""
    law = stn.data.data_law("mnist-p")
    old = {"kind": "p", "version": 1, "options": {k: v for k, v in law["options"].items() if k != "moved"}}
    copy = _recorded_as(p_run, tmp_path / "v1", old)
    loss, err = _loss(cli, copy, mnist_dir)
    own, _ = _loss(cli, p_run, mnist_dir, "--data-option", "moved=target")
    current, _ = _loss(cli, p_run, mnist_dir)
    assert loss == own
    assert loss != current
    assert "recipe version 1" in err and "moved=target: measured on it" in err


def test_a_law_this_torchstn_draws_no_more_is_refused_unless_data_are_chosen(cli, p_run, mnist_dir, tmp_path):
    law = {**stn.data.data_law("mnist-p"), "version": 99}
    copy = _recorded_as(p_run, tmp_path / "v99", law)
    line = cli("eval", copy, "--data-dir", mnist_dir, "--limit", 8).error_line()
    assert "recipe version 99" in line and "draws no more" in line and "--data-option" in line
    line = cli("visualize", copy, "--data-dir", mnist_dir, "--num", 4, "--out", tmp_path / "v.png").error_line()
    assert "draws no more" in line
    loss, err = _loss(cli, copy, mnist_dir, "--data-option", "moved=source")
    current, _ = _loss(cli, p_run, mnist_dir)
    assert loss == current
    assert "measured, as asked, on mnist-p as recipe version 2" in err


def test_a_run_that_records_no_law_is_told_of_the_earlier_versions_of_its_recipe(cli, p_run, tiny, mnist_dir,
                                                                                 tmp_path):
    copy = _recorded_as(p_run, tmp_path / "unrecorded", _DROP)
    _, err = _loss(cli, copy, mnist_dir)
    assert "does not record the law" in err and "version 1 with --data-option moved=target" in err
    # a recipe that never changed has nothing to tell
    rts = tmp_path / "rts"
    assert cli("train", "--model", "cnn", "--data", "mnist-rts", "--steps", 1, "--out", rts, *tiny).status == 0
    _, err = _loss(cli, _recorded_as(rts, tmp_path / "rts-unrecorded", _DROP), mnist_dir)
    assert "note" not in err


def test_resume_refuses_a_run_whose_law_is_drawn_no_more_and_keeps_an_unrecorded_one_unrecorded(cli, p_run,
                                                                                                tmp_path):
    law = stn.data.data_law("mnist-p")
    old = {"kind": "p", "version": 1, "options": {k: v for k, v in law["options"].items() if k != "moved"}}
    copy = _recorded_as(p_run, tmp_path / "v1", old)
    line = cli("train", "--out", copy, "--resume", "--epochs", 2, "--no-progress").error_line()
    assert "cannot resume" in line and "recipe version 1" in line and "the recipe has changed since" in line
    copy = _recorded_as(p_run, tmp_path / "unrecorded", _DROP)
    run = cli("train", "--out", copy, "--resume", "--epochs", 2, "--no-progress")
    assert run.status == 0, run.err
    _, _, info = read_checkpoint(copy / "checkpoints" / "last.safetensors")
    assert info["epoch"] == 2 and "data_law" not in info  # its first epoch's law is not known


def test_a_run_on_sets_given_to_the_trainer_records_no_law(mnist_dir, tmp_path):
    sets = [stn.data.get_dataset("mnist-p", split, root=mnist_dir, limit=64) for split in ("train", "test")]
    config = TrainConfig(model="cnn", data="mnist-p", steps=1, batch_size=32)
    train(config, tmp_path / "given", train_set=sets[0], test_set=sets[1], progress=False)
    _, _, info = read_checkpoint(tmp_path / "given" / "checkpoints" / "last.safetensors")
    assert "data_law" not in info
    config, note = run_data(config, {**info, "path": "given"})
    assert config.data_options == {} and "does not record the law" in note


def test_options_for_names_the_options_that_draw_an_earlier_version():
    p = stn.data.KINDS["p"]
    current = stn.data.data_law("mnist-p", {"sigma": 3.0})
    assert p.options_for(current) == current["options"]
    assert p.options_for({"kind": "p", "version": 1, "options": {"sigma": 3.0}}) == {"sigma": 3.0, "moved": "target"}
    assert stn.data.get_recipe("p", p.options_for({"kind": "p", "version": 1, "options": {}})).options["moved"] == \
        "target"
    assert p.options_for({"kind": "p", "version": 3, "options": {}}) is None
    perturbed = stn.data.KINDS["perturbed"]
    assert perturbed.options_for({"kind": "perturbed", "version": 1, "options": {}}) == {"units": "edges"}
    with pytest.raises(ValueError, match="not one of 'p'"):
        p.options_for(stn.data.data_law("mnist-rts"))
