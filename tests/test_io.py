"""Atomic writes and the study lock."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from facetransfer.errors import StudyBusyError
from facetransfer.io import (
    StudyLock,
    atomic_path,
    atomic_write_json,
    read_json,
    remove_orphan_temps,
)


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


def test_temps_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "_cache" / "images"
    cache.mkdir(parents=True)
    # a writer killed inside atomic_path (os._exit skips every cleanup) leaves its temporary file
    code = "import os, sys; from facetransfer.io import atomic_path\nwith atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'x' * 1000); os._exit(0)"
    subprocess.run([sys.executable, "-c", code, str(cache / "abc.u8")], check=True)
    (orphan,) = cache.glob(".abc.u8.*")
    assert re.match(r"\.abc\.u8\.pid\d+@[A-Za-z0-9-]+\.[^.]+\.tmp$", orphan.name)
    other_host = cache / ".def.u8.pid1@some-other-host.k2j3.tmp"
    unknown = cache / ".ghi.u8.x7.tmp"  # no writer in the name (older versions): kept
    for path in (other_host, unknown):
        path.write_bytes(b"y")
    with atomic_path(cache / "mine.npy", suffix=".npy") as mine:
        mine.write_bytes(b"z")
        removed = remove_orphan_temps(tmp_path / "_cache")
        assert removed == [(orphan, 1000)] and mine.is_file()  # our own write goes on
    assert not orphan.exists() and other_host.is_file() and unknown.is_file()
    assert (cache / "mine.npy").read_bytes() == b"z"
    assert remove_orphan_temps(tmp_path / "absent") == []
