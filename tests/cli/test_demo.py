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
