"""The one file-lock mechanism (``torchstn._locks``) behind a run's trainer, a reproduce cell,
a record's rewrite and a kernel's build: held across processes, named by its holder's pid,
let go however its process ends."""

import os
import subprocess
import sys
import threading
import time

import pytest

from torchstn import _locks
from torchstn._locks import LockBusy, PidLock, exclusive

pytestmark = pytest.mark.skipif(_locks.fcntl is None, reason="no fcntl: nothing is locked on this system")

_HOLDER = """
import sys, time
from pathlib import Path
from torchstn._locks import PidLock, exclusive
if sys.argv[2] == "pid":
    lock = PidLock(Path(sys.argv[1]))
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
else:
    with exclusive(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
"""


def _holder(tmp_path, path, kind, seconds=120.0):
    """A process holding ``path``'s lock of ``kind`` ("pid" or "exclusive"), once it has said so."""
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), kind, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_pid_lock_held_by_another_process_is_refused_with_its_pid_and_freed_when_it_is_killed(tmp_path):
    path = tmp_path / "deep" / "run.lock"
    proc = _holder(tmp_path, path, "pid")
    try:
        lock = PidLock(path)
        assert lock.holder() == proc.pid
        with pytest.raises(LockBusy, match=f"another process \\(pid {proc.pid}\\) holds the lock") as busy:
            lock.acquire()
        assert busy.value.pid == proc.pid and not lock.held
    finally:
        proc.kill()
        proc.wait()
    # the killed holder's file is still there, with its pid, but locks nothing
    assert path.read_text() == f"{proc.pid}\n" and lock.holder() is None
    assert lock.acquire() and lock.holder() == os.getpid() and path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not path.exists() and lock.holder() is None and not lock.held


def test_a_pid_lock_is_one_holder_per_path_within_a_process_too(tmp_path):
    path = tmp_path / "cell.lock"
    with PidLock(path) as first:
        assert first.held
        with pytest.raises(LockBusy):  # (flock is per open file: a second object is another holder)
            PidLock(path).acquire()
        assert first.acquire()  # (already held: nothing to do)
    assert not path.exists()


def test_a_subclass_says_what_the_holder_does(tmp_path):
    class Busy(LockBusy):
        what = "is training it"

    with PidLock(tmp_path / "a.lock"):
        with pytest.raises(Busy, match=f"another process \\(pid {os.getpid()}\\) is training it"):
            PidLock(tmp_path / "a.lock", busy=Busy).acquire()


def test_a_pid_lock_in_a_directory_it_cannot_write_locks_nothing(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes every directory")
    tmp_path.chmod(0o500)
    try:
        assert PidLock(tmp_path / "x" / "run.lock").acquire() is False
    finally:
        tmp_path.chmod(0o700)


def test_exclusive_waits_for_its_holder_and_says_so(tmp_path, capsys):
    path = tmp_path / "build.lock"
    proc = _holder(tmp_path, path, "exclusive", seconds=0.5)
    try:
        start = time.perf_counter()
        with exclusive(path, waiting="another process's build") as locked:
            waited = time.perf_counter() - start
            assert locked
    finally:
        proc.kill()
        proc.wait()
    assert waited > 0.2
    err = capsys.readouterr().err
    assert err.startswith("torchstn: waiting for another process's build ... done in ") and err.endswith(" s\n")


def test_exclusive_serialises_threads_holding_a_directory(tmp_path):
    inside, most = [0], [0]

    def work():
        with exclusive(tmp_path):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
