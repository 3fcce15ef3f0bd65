"""What training prints: a progress bar on a terminal, one line per epoch in a log file."""

import contextlib
import io
import re

from torchstn.engine import TrainConfig, train


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


def _train(shapes, stderr: io.StringIO) -> str:
    """Train two short epochs with progress=True and the given stderr; what stdout and stderr received."""
    config = TrainConfig(model="tutorial", data="shapes", epochs=2, batch_size=32, lr=0.05, seed=3, device="cpu")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        train(config, None, train_set=shapes[0], test_set=shapes[1], progress=True)
    return stdout.getvalue() + stderr.getvalue()


def test_a_log_file_gets_one_line_per_epoch_and_no_progress_bar(shapes):
    printed = _train(shapes, io.StringIO())
    assert "\r" not in printed and "batch/s" not in printed and "it/s" not in printed
    epoch_lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert [re.match(r"epoch\s+(\d)/2 ", line).group(1) for line in epoch_lines] == ["1", "2"]


def test_a_terminal_gets_the_progress_bar(shapes):
    stderr = _Terminal()
    _train(shapes, stderr)
    assert "\r" in stderr.getvalue() and "epoch 1/2" in stderr.getvalue()  # the bar, redrawn in place
