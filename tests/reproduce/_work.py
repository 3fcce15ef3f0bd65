"""Stand-ins for a cell's training, run in the spawned workers of ``--jobs`` (importable there)."""

import os
import time
from pathlib import Path


def quick_or_stuck(cell, runs, options):  # noqa: ANN001, ANN201 - the signature of _run_in_worker
    """The FCN cell ends at once; any other writes its pid and trains "for two minutes"."""
    marker = Path(runs) / f"{cell.row.key}.pid"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    if cell.row.key != "fcn":
        time.sleep(120)
    return {"error": 1.0, "digest": cell.digest}


def killed_or_stuck(cell, runs, options):  # noqa: ANN001, ANN201 - the signature of _run_in_worker
    """The FCN cell's worker is killed (as by the out-of-memory killer) once the other one has started;
    any other writes its pid and trains "for two minutes"."""
    import signal

    marker = Path(runs) / f"{cell.row.key}.pid"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    if cell.row.key == "fcn":
        while len(list(Path(runs).glob("*.pid"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
    return {"error": 1.0, "digest": cell.digest}
