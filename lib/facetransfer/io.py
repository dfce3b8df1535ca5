"""Atomic artifact writes and the study lock.

Every artifact is written to a temporary file in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so a killed process never leaves a half-written file
under its final name. A run is complete only when its ``metrics.json`` exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facetransfer.errors import FacetransferError, StudyBusyError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cores() -> int:
    """The CPU cores this process may run on (here, not in runtime: the Dask client uses it
    without importing Keras)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_tag() -> str:
    """This host's name as it appears in temporary file names (no dots, no slashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


_TEMP_NAME = re.compile(r"^\..+\.pid(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[^.]+\.tmp")


def remove_orphan_temps(folder) -> list[tuple[Path, int]]:
    """Delete the temporary files under ``folder`` whose writer is dead; ``[(path, bytes)]``.

    Only names written by :func:`atomic_path` on THIS host whose process no longer exists
    are removed (a kill during a write leaves them); files of live processes, of other
    hosts and any other file are kept.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    host = host_tag()
    for path in folder.rglob(".*.tmp*"):
        match = _TEMP_NAME.match(path.name)
        if not match or match["host"] != host or pid_alive(int(match["pid"])) or not path.is_file():
            continue
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        removed.append((path, size))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    ``suffix`` keeps an extension on the temporary name for writers that need one
    (e.g. ``.keras``). The name carries the writer (``.<name>.pid<pid>@<host>.<random>.tmp``)
    so that :func:`remove_orphan_temps` can tell a killed writer's leftover from work in
    progress.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}@{host_tag()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically (index not written)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


class DamagedFileError(FacetransferError):
    """A file under its final name that does not parse (damaged after it was written)."""


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a damaged one is a one-line :class:`DamagedFileError` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(f"{path} is damaged: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); delete it and run again") from None
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is damaged: not UTF-8 text; delete it and run again") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyLock:
    """An exclusive lock file holding the owner's pid and host.

    A second process gets :class:`StudyBusyError` naming the holder. A lock left by a
    dead process on this host (kill -9) is recognised as stale and taken over.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.acquired = False

    def _holder(self) -> dict | None:
        """``{"pid", "host"}`` of the holder; None while the file is empty or not what we write."""
        try:
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if isinstance(pid, bool) or not isinstance(pid, int):
            return None  # damaged: judged by its age, like an empty one
        return holder

    def acquire(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    # being written by its holder right now, or left empty by a crash
                    try:
                        age = time.time() - self.path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    stale = age > 10
                    holder = {"pid": "?", "host": "?"}
                else:
                    stale = holder.get("host") == me["host"] and not pid_alive(
                        int(holder.get("pid", -1))
                    )
                if not stale:
                    raise StudyBusyError(
                        f"study is busy: {self.path} is held by pid {holder.get('pid')} on "
                        f"{holder.get('host')}; wait for it or stop that process"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.acquired = True
            return self
        raise StudyBusyError(f"study is busy: could not take {self.path}")

    def release(self) -> None:
        if self.acquired:
            self.path.unlink(missing_ok=True)
            self.acquired = False

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
