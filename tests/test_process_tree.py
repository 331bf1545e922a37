"""The local submitit launcher finds the processes under the sweep's (to pass a signal on to its jobs) through
psutil, grandchildren included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hydra_plugins.resnext_lab.submitit_launchers import _descendants

#: a child that starts a grandchild, writes the grandchild's pid, then waits for it
_TREE = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1] + ".tmp", "w").write(str(grandchild.pid))
__import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
grandchild.wait()
"""


def test_descendants_finds_children_and_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    child = subprocess.Popen([sys.executable, "-c", _TREE, str(pid_file)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists():  # the child writes it once the grandchild has started
            assert child.poll() is None and time.monotonic() < deadline, "the child did not start its grandchild"
            time.sleep(0.02)
        grandchild = int(pid_file.read_text())
        group = os.getpgid(child.pid)  # its own session: the launcher looks in one process group
        found = _descendants(os.getpid(), group)
        assert child.pid in found and grandchild in found
        assert found.index(child.pid) < found.index(grandchild)
        assert _descendants(child.pid, group) == [grandchild]
        assert child.pid not in _descendants(os.getpid(), os.getpgrp())  # another process group: not Ctrl-C's
    finally:
        os.killpg(child.pid, 9)
        child.wait()
    assert _descendants(child.pid, group) == []  # a process that is gone has none


def test_a_packed_workers_memory_is_recorded_through_psutil(tmp_path: Path) -> None:
    """`.packed/rss.jsonl` gets the worker's resident memory, as the kernel counts it (here: this process)."""
    import json
    from types import SimpleNamespace

    from hydra_plugins.resnext_lab.packed_launcher import _record_rss

    (tmp_path / ".packed").mkdir()
    worker = SimpleNamespace(number=0, process=SimpleNamespace(pid=os.getpid()))
    _record_rss(tmp_path, worker, job=3, done=1)  # type: ignore[arg-type]
    line = json.loads((tmp_path / ".packed" / "rss.jsonl").read_text())
    status = Path("/proc/self/status").read_text()
    vm_rss = next(int(s.split()[1]) for s in status.splitlines() if s.startswith("VmRSS:"))
    assert line["job"] == 3 and line["pid"] == os.getpid()
    assert abs(line["rss_kb"] - vm_rss) < 0.1 * vm_rss
