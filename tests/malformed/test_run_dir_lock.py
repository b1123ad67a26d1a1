"""Two processes must not train into one run directory; a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from alignloop.errors import AlignloopError
from alignloop.train.run_dir import LOCK_NAME, RunDir

HOLDER = """
import sys, time
from alignloop.train.run_dir import RunDir
RunDir(sys.argv[1]).begin()
print("locked", flush=True)
time.sleep(120)
"""


def _start_holder(path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_process_is_refused_with_the_holders_pid_then_a_killed_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    child = _start_holder(run)
    try:
        with pytest.raises(AlignloopError) as err:
            RunDir(run).begin()
        assert str(err.value) == (f"run directory {run} is in use by process {child.pid} on {os.uname().nodename}; "
                                  "wait for it to finish or pass another --out")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert (run / LOCK_NAME).exists()  # the stale lock file is still there ...
    taken = RunDir(run).begin()  # ... and is taken over, because its holder is gone
    assert (run / LOCK_NAME).read_text().startswith(f"process {os.getpid()} ")
    taken.finish({"stage": "test"})
    again = RunDir(run).begin()  # released by finish()
    again.release()


def test_the_same_process_may_reopen_its_own_run_directory(tmp_path):
    first = RunDir(tmp_path / "run").begin()
    second = RunDir(tmp_path / "run").begin()  # e.g. an evaluation writing into the stage's own folder
    second.release()
    first.release()
    start = time.time()
    child = _start_holder(tmp_path / "run")  # fully released: another process can lock it now
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert time.time() - start < 60


def test_cli_names_the_lock_holder(cli_error, tmp_path):
    child = _start_holder(tmp_path / "run")
    try:
        message = cli_error("sft", "examples/sft.yaml", "-s", "model=tiny-llama", "-o", tmp_path / "run")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert message == (f"run directory {tmp_path / 'run'} is in use by process {child.pid} on {os.uname().nodename}; "
                       "wait for it to finish or pass another --out")
