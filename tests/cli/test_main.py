"""The one dialect of every subcommand: examples in each --help, the shared options and their checks, the entry points."""

import contextlib
import io
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from torchstn import __version__
from torchstn.cli import SUBCOMMANDS, build_parser

#: the shared options, each with the one help text every subcommand shows (a command that reads a
#: run names the run's recorded data directory first: RECORDED)
SHARED = {
    "--data-dir DIR": "directory holding the data: the MNIST files, the CIFAR-10 archive or UCR <Name>/ folders "
                      "(default:",
    "--device DEV": "cpu, cuda, cuda:N or auto (default:",
    "--threads N": "CPU threads of torch (default: torch's; 1 is faster on a busy machine)",
}
#: the subcommands that do without one (bench and export read no data; data and export run on the CPU)
WITHOUT = {"--data-dir DIR": {"bench", "export"}, "--device DEV": {"data", "export"}, "--threads N": set()}
#: the help that shows a subcommand's options (data's are on its actions)
HELP = {name: [name] for name in SUBCOMMANDS} | {"data": ["data", "preview"]}


def _help(cli, *command: str) -> str:
    run = cli(*command, "--help")
    assert run.status == 0, run.err
    return " ".join(run.out.split())


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "data preview", "data generate", "data list"])
def test_help_shows_examples(cli, command):
    help = _help(cli, *command.split())
    assert "examples:" in help and f"torchstn {command.split()[0]}" in help


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_help_example_parses_as_written(cli, command):
    """A help example copied as it stands (its note after `#`) is a command the parser takes: a note
    without its `#` was read as arguments (`torchstn export RUN writes ...`: unrecognized arguments)."""
    examples = [line.split("#")[0] for line in cli(command, "--help").out.splitlines()
                if line.startswith("  torchstn ")]
    assert examples
    parser = build_parser()
    for line in examples:
        argv = shlex.split(line)[1:]
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                parser.parse_args(argv)
            except SystemExit as exit:
                assert exit.code == 0, (line, err.getvalue())


def test_the_top_level_help_shows_examples(cli):
    assert "examples: torchstn demo" in _help(cli)


RECORDED = {"eval": "the one the run recorded, then ", "visualize": "the one the run recorded, then ",
            "reproduce": "with --refresh the one each run recorded, then "}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_shared_options_have_one_help(cli, command):
    help = _help(cli, *HELP[command])
    for option, text in SHARED.items():
        if command == "reproduce":  # (its workers take one thread each: its own default, said in the same words)
            text = text.replace("default: torch's", "default: 1")
        assert (f"{option} {text}" in help) == (command not in WITHOUT[option]), (command, option)
    if command not in WITHOUT["--data-dir DIR"]:
        sources = "$TORCHSTN_DATA, the cache, or a download of MNIST)"
        assert f"(default: {RECORDED.get(command, '')}{sources}" in help, command


@pytest.mark.parametrize("command", [["demo"], ["data", "preview", "r"], ["data", "generate", "r"], ["train"],
                                     ["eval", "run"], ["visualize", "run"], ["bench"], ["export", "run"],
                                     ["reproduce", "stn-table1"]], ids=" ".join)
def test_the_thread_check_is_shared(cli, command):
    """Every subcommand refuses --threads 0 with the same line, before it does any work."""
    assert cli(*command, "--threads", 0).error_line() == "torchstn: error: --threads must be at least 1, got 0"


@pytest.mark.parametrize("command", [["demo"], ["data", "preview", "r"], ["data", "generate", "r"], ["train"],
                                     ["eval", "run"], ["visualize", "run"], ["reproduce", "stn-table1"]],
                         ids=" ".join)
def test_a_missing_data_dir_is_the_same_error_everywhere(cli, command, tmp_path):
    line = cli(*command, "--data-dir", tmp_path / "nowhere").error_line()
    assert f"data directory {tmp_path / 'nowhere'} does not exist" in line and "t10k-images-idx3-ubyte.gz" in line


def test_an_unknown_device_is_one_line_everywhere(cli, tmp_path):
    for command in (["train", "--model", "cnn", "--data", "mnist", "--out", tmp_path / "run"], ["bench"]):
        assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'" in cli(*command, "--device", "gpu").error_line()


def test_python_m_and_the_console_script_run_main():
    """The entry points are real processes: ``python -m torchstn`` (what torchrun runs) and ``torchstn``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "-m", "torchstn", "--version"]]
    script = Path(sys.executable).with_name("torchstn")
    if script.is_file():
        commands.append([str(script), "--version"])
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == f"torchstn {__version__}", proc.stderr


def test_a_reader_that_leaves_ends_the_command_quietly():
    """``torchstn export RUN | head -1`` ended with "torchstn: error: [Errno 32] Broken pipe": a closed
    stdout ends the command with status 1 and nothing on stderr, as other commands end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torchstn", "data", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # (before the command prints: it imports torch first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1 and err == ""


@pytest.mark.parametrize("command", [["train"], ["reproduce", "stn-table1"], ["eval", "run"]], ids=" ".join)
def test_a_misspelt_option_is_reported_with_its_commands_usage(cli, command):
    run = cli(*command, "--stepz", 5)
    assert run.status == 2
    assert f"usage: torchstn {command[0]}" in run.err and "unrecognized arguments: --stepz 5" in run.err


@pytest.mark.parametrize("action", [["list"], ["preview", "r"], ["generate", "r"]], ids=" ".join)
def test_a_misspelt_option_of_a_data_action_shows_the_action_s_usage(cli, action):
    """``torchstn data list --bogus`` printed the usage of ``torchstn data``."""
    run = cli("data", *action, "--bogus")
    assert run.status == 2 and f"usage: torchstn data {action[0]}" in run.err and "--bogus" in run.err


def _print_to_stderr(message, category, filename, lineno, file=None, line=None):
    """Python's own showwarning outside pytest: ``warnings.formatwarning`` of the warning, written to stderr
    (pytest records warnings instead of printing them)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_a_warning_of_the_command_is_one_line_and_filters_still_apply(cli, mnist_dir, tmp_path, monkeypatch):
    """A warning printed as Python prints it (the file path of torchstn's source, then its line); the command
    prints ``torchstn: warning: MESSAGE``, library users keep Python's format, and filters and captures apply."""
    tiny = ["train", "--model", "cnn", "--data", "mnist", "--data-dir", mnist_dir, "--train-limit", 16,
            "--test-limit", 16, "--batch-size", 32, "--epochs", 1, "--no-progress"]
    said = "batch_size 32 is more than the 16 training examples of mnist"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", _print_to_stderr)
        run = cli(*tiny, "--out", tmp_path / "printed")
    assert run.status == 0, run.err
    lines = [line for line in run.err.splitlines() if said in line]
    assert len(lines) == 1 and lines[0].startswith(f"torchstn: warning: {said}"), run.err
    assert ".py:" not in run.err and "Warning:" not in run.err, run.err
    assert warnings.formatwarning is warnings._formatwarning_orig  # restored: the library's users keep Python's
    with pytest.warns(UserWarning, match=said):  # a capture still receives the warning itself
        assert cli(*tiny, "--out", tmp_path / "caught").status == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as -W ignore or PYTHONWARNINGS=ignore
        monkeypatch.setattr(warnings, "showwarning", _print_to_stderr)
        assert "warning" not in cli(*tiny, "--out", tmp_path / "ignored").err
