"""Atomic writes and the study lock."""

import json
import os
import stat
import subprocess
import sys

import pytest

from facetransfer.errors import StudyBusyError
from facetransfer.io import StudyLock, atomic_write_json, read_json


def test_atomic_write_leaves_no_temp_and_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert read_json(target) == {"a": 1}  # the old file survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_lock_busy_names_the_holder_and_stale_lock_is_recovered(tmp_path):
    path = tmp_path / ".lock"
    with StudyLock(path):
        with pytest.raises(StudyBusyError, match=f"pid {os.getpid()}"):
            StudyLock(path).acquire()
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = json.loads(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname()}))
    path.write_text(json.dumps(holder))
    with StudyLock(path) as lock:  # the holder is dead: taken over
        assert read_json(path)["pid"] == os.getpid()
        assert lock.acquired
