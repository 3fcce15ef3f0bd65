"""``torchstn bench``: the report, its JSON and the recorded command; no timing is asserted (the machine is shared)."""

import json

import torch


def test_cli_quick_json(cli, tmp_path) -> None:
    out = tmp_path / "sub" / "bench.json"
    run = cli("bench", "--quick", "--cases", "translation-28", "--no-kornia", "--json", out)
    assert run.status == 0, run.err
    assert "$ torchstn bench --device cpu --quick --cases translation-28 --no-kornia" in run.out
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    assert data["meta"]["command"] == "torchstn bench --device cpu --quick --cases translation-28 --no-kornia"
    assert data["cases"][0]["name"] == "translation-28"
    assert "kornia" not in data["cases"][0]["passes"]["forward"]
    assert {"opencv", "jax"} <= set(data["meta"])  # their versions, None where not installed
    assert {t["target"].split(" ")[0] for t in data["targets"]} >= {"affine", "never", "TPS"}
    # a quick run judges no target, in the JSON as in the printed report
    assert all(t["met"] is None and t["detail"].startswith("not judged in a quick run") for t in data["targets"])
    left_out = "kornia: not timed in this run (left out of peers=('torch', 'opencv', 'jax'), as --no-kornia does)"
    assert left_out in run.out
    assert f"not judged in a quick run (tiny sizes, {data['meta']['rounds']} rounds of" in run.out


def test_the_flags_the_notes_name_exist(cli) -> None:
    from torchstn.bench import PEER_FLAGS

    usage = cli("bench", "--help").out
    assert PEER_FLAGS and all(f"{flag} " in usage for flag in PEER_FLAGS.values())


def test_a_json_path_that_cannot_be_written_is_refused_before_the_timing(cli, tmp_path) -> None:
    (tmp_path / "file").write_text("")
    for path, says in ((tmp_path, "is a directory; --json names the file to write"),
                       (tmp_path / "file" / "b.json", "cannot write there (--json")):
        run = cli("bench", "--quick", "--cases", "translation-28", "--json", path)
        assert says in run.error_line() and "timing" not in run.err


def test_cli_errors_are_one_line(cli) -> None:
    assert "no benchmark case matches 'nope'" in cli("bench", "--quick", "--cases", "nope").error_line()
    assert "--rounds must be at least 1, got 0" in cli("bench", "--rounds", "0").error_line()
    assert "--backends must be one of ['torch', 'fused', 'reference'], got 'nope'" in cli(
        "bench", "--backends", "nope").error_line()
    if not torch.cuda.is_available():
        assert "no CUDA device" in cli("bench", "--device", "cuda").error_line()
        assert "no CUDA device" in cli("bench", "--device", "cuda:1").error_line()


def test_device_is_read_as_everywhere_else(cli) -> None:
    """``auto`` and ``cuda:N`` as in train and eval (the default stays cpu: timings on what was asked for)."""
    run = cli("bench", "--quick", "--cases", "translation-28", "--no-kornia", "--no-components", "--device", "auto")
    assert run.status == 0, run.err
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"bench on {expected}" in run.out
    assert "--device auto" in run.out  # the recorded command is the one that was run
    assert "device must be" in cli("bench", "--device", "gpu").error_line()
