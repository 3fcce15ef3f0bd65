"""The CLI runner: ``torchstn ARGV`` in this process, its exit status, stdout and stderr.

Every CLI test calls the command through the ``cli`` fixture (one style); a subprocess
is used only where a real process is the point (the console script, torchrun).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest
import torch

from torchstn.cli import main


@dataclass
class Run:
    """What one ``torchstn`` command did."""

    status: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``torchstn: error:`` line of a command that failed as a user error (status 2, no traceback)."""
        assert self.status == 2, self.err
        assert "Traceback" not in self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("torchstn: error: "), self.err
        return lines[0]


def run_cli(*argv: object) -> Run:
    """Run ``torchstn ARGV`` in-process; torch's thread count is restored afterwards (``--threads`` sets it)."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit:  # argparse: --help, --version, a malformed command line
            status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 2
        finally:
            torch.set_num_threads(threads)
    return Run(status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    """``cli("train", "--epochs", 1, ...)`` -> :class:`Run` (arguments are turned into strings)."""
    return run_cli


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory):
    """No CLI test reads or writes the user's cache, follows their TORCHSTN_DATA or downloads anything."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TORCHSTN_CACHE", str(tmp_path_factory.mktemp("cache")))
        m.delenv("TORCHSTN_DATA", raising=False)
        m.setattr("torchstn.data._mnist.MIRRORS", [])
        yield
