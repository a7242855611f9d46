"""A run owns its --out (a lock naming its pid); children die with their parent; a bad --out is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.orchestrator.lifetime import RunLock, check_out_dir


def test_a_second_owner_of_the_same_out_is_refused_with_the_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from sparq_stream.orchestrator.lifetime import RunLock; "
         f"lock = RunLock(Path({str(tmp_path)!r})).acquire(); print('locked', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"^--out {tmp_path} is in use by another run \(pid {holder.pid}\)$"):
            RunLock(tmp_path).acquire()
        holder.kill()
        holder.wait(10)
        with RunLock(tmp_path):  # the kernel released the dead owner's lock
            assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    finally:
        holder.kill()


def test_a_file_or_an_impossible_out_is_a_config_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_out_dir(afile)
    with pytest.raises(ConfigError, match="cannot create the folder"):
        check_out_dir(afile / "sub")


_PARENT = """
import subprocess, sys, time
from sparq_stream.children import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True, preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            os.kill(child, 9)
            pytest.fail("the child outlived its parent")
    finally:
        parent.kill()
