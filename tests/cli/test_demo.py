"""``torchstn demo`` end to end on a tiny budget."""


def test_demo_trains_both_models_and_writes_the_figure(cli, mnist_dir, tmp_path):
    run = cli("demo", "--data-dir", mnist_dir, "--out", tmp_path, "--steps", 12, "--train-limit", 192,
              "--test-limit", 64, "--batch-size", 16, "--no-progress")
    assert run.status == 0, run.err
    table = run.out[run.out.index("model "):]
    assert "st-cnn-aff" in table and "cnn " in table and "%" in table
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    for name in ("st-cnn-aff", "cnn"):
        assert (tmp_path / name / "checkpoints" / "last.safetensors").is_file()
    # a second demo into the same directory replaces its runs instead of failing
    again = cli("demo", "--data-dir", mnist_dir, "--out", tmp_path, "--steps", 4, "--train-limit", 64,
                "--test-limit", 16, "--batch-size", 16, "--no-progress")
    assert again.status == 0, again.err


def test_demo_with_a_missing_data_dir_is_a_one_line_error(cli, tmp_path):
    line = cli("demo", "--data-dir", tmp_path / "nowhere").error_line()
    assert "does not exist" in line


def test_demo_replaces_only_its_own_runs(cli, mnist_dir, tmp_path):
    """The demo deleted whatever was at OUT/cnn and OUT/st-cnn-aff (a user's files, another run)
    without a word; it replaces a previous demo's runs (test above) and refuses anything else,
    before training or removing anything."""
    (tmp_path / "cnn" / "notes").mkdir(parents=True)
    (tmp_path / "cnn" / "notes" / "important.txt").write_text("keep")
    tiny = ["--data-dir", mnist_dir, "--steps", 2, "--train-limit", 32, "--test-limit", 16, "--batch-size", 16,
            "--no-progress"]
    line = cli("demo", "--out", tmp_path, *tiny).error_line()
    assert f"{tmp_path / 'cnn'} is not a previous demo run (cnn on mnist-rts)" in line
    assert (tmp_path / "cnn" / "notes" / "important.txt").read_text() == "keep"
    assert not (tmp_path / "st-cnn-aff").exists()  # (nothing trained first)
    other = tmp_path / "other"
    assert cli("train", "--model", "st-cnn-aff", "--model-arg", "pool=2", "--data", "mnist-r", "--out",
               other / "st-cnn-aff", *tiny).status == 0
    line = cli("demo", "--out", other, *tiny).error_line()
    assert "st-cnn-aff is not a previous demo run (st-cnn-aff on mnist-rts)" in line
    assert (other / "st-cnn-aff" / "config.json").is_file()
