"""The run directory: created fresh for every run, never overwritten, written atomically.

``journal.jsonl`` is append-only: each finished evaluation is one JSON line,
flushed and fsynced before the search moves on, so a run killed at any moment
loses at most the line being written (which the reader reports and skips; the
torn bytes are kept in ``journal.jsonl.torn-N`` before the next append).

``driver.lock`` is held (``flock``) by the driver for as long as it runs, and
``driver.json`` says which process that is: a reader on the same machine can
tell a live run from one whose driver died (:func:`driver_state`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pickle
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "RunBusy", "atomic_write_bytes", "atomic_write_text", "driver_state", "read_journal",
           "read_journal_checked"]

JOURNAL = "journal.jsonl"
CHECKPOINT = "checkpoint.pkl"
CONFIG = "config.yaml"
DRIVER_LOCK = "driver.lock"
DRIVER = "driver.json"


class RunBusy(RuntimeError):
    """Another live driver holds this run directory."""


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(value: Any, **kwargs: Any) -> str:
    """JSON with non-finite floats as null (a failed fitness is +-inf in memory)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), default=_json_default, allow_nan=False, **kwargs)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as shareable as any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a journal; a torn last line (a kill mid-write) is dropped."""
    return read_journal_checked(path)[0]


def read_journal_checked(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every complete row of a journal, and one sentence per line that was dropped and why.

    A line cut short by a kill (no newline at the end of the file) or one that
    is not JSON is skipped; the rows after a bad line in the middle still count.
    """
    rows: list[dict[str, Any]] = []
    dropped: list[str] = []
    if not Path(path).exists():
        return rows, dropped
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                dropped.append(f"line {number} is torn ({len(line)} bytes without a newline: the driver was "
                               "killed while writing it)")
                break
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                dropped.append(f"line {number} is not valid JSON ({len(line)} bytes)")
    return rows, dropped


def _pid_started(pid: int) -> float | None:
    """The start time of process ``pid`` in seconds since boot, from /proc (None where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def driver_state(path: Path) -> dict[str, Any]:
    """Whether a run directory's driver is ``running``, ``dead`` or ``unknown``, with what ``driver.json`` says.

    ``running``: the driver holds ``driver.lock``; ``dead``: nobody does (the
    driver ended, was killed, or its machine went away); ``unknown``: a run
    written before the lock existed, or one whose driver ran on another host
    (file locks do not reliably cross machines).
    """
    path = Path(path)
    info: dict[str, Any] = {}
    try:
        info = json.loads((path / DRIVER).read_text())
    except (OSError, ValueError):
        pass
    lock = path / DRIVER_LOCK
    if not lock.exists() or (info.get("host") and info["host"] != socket.gethostname()):
        return {"state": "unknown", **info}
    with open(lock, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"state": "running", **info}
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return {"state": "dead", **info}


class RunDir:
    """Paths and durable writes of one run directory."""

    journal_name = JOURNAL  # the append-only journal's file name (a benchmark's is results.jsonl)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._journal = None
        self._lock = None
        self.dropped: list[str] = []  # journal lines the last read skipped, and why

    @classmethod
    def create(cls, parent: Path, label: str) -> "RunDir":
        """A new directory ``parent/<timestamp>-<label>[-n]``; an existing one is never reused."""
        parent = Path(parent).expanduser()
        parent.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
        for n in range(1000):
            path = parent / (stem if n == 0 else f"{stem}-{n}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a fresh run directory under {parent}")

    @classmethod
    def existing(cls, path: Path) -> "RunDir":
        path = Path(path).expanduser()
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path} is not a run directory (no {CONFIG}); nothing to resume")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # journal --------------------------------------------------------------------
    def journal_rows(self) -> list[dict[str, Any]]:
        rows, self.dropped = read_journal_checked(self.file(self.journal_name))
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Append one row durably (write, flush, fsync)."""
        if self._journal is None:
            self._truncate_torn_tail()
            self._journal = open(self.file(self.journal_name), "ab")
        self._journal.write((to_json(row) + "\n").encode())
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _truncate_torn_tail(self) -> None:
        """Cut a partial last line left by a kill, so new rows start on a fresh line."""
        path = self.file(self.journal_name)
        if not path.exists():
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            torn = next(self.file(f"{path.name}.torn-{n}") for n in range(1, 10**6)
                        if not self.file(f"{path.name}.torn-{n}").exists())
            atomic_write_bytes(torn, data[keep:])  # cut from the journal, never thrown away
            with open(path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # driver ----------------------------------------------------------------------
    def claim(self) -> None:
        """Hold ``driver.lock`` until :meth:`release` or this process ends; fail if a live driver holds it."""
        lock = open(self.file(DRIVER_LOCK), "ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            other = driver_state(self.path)
            raise RunBusy(f"{self.path} is being run by another driver (pid {other.get('pid', '?')} on "
                          f"{other.get('host', '?')}, started {other.get('started', '?')}); wait for it to finish, "
                          "or stop it, before resuming this run") from None
        self._lock = lock
        self.write_json(DRIVER, {"pid": os.getpid(), "host": socket.gethostname(),
                                 "pid_started": _pid_started(os.getpid()),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    # checkpoint ------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write_bytes(self.file(CHECKPOINT), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load_checkpoint(self, log=None) -> dict[str, Any] | None:
        """The last checkpoint, or None before the first generation finished.

        The file is this project's own (written by :meth:`save_checkpoint`);
        it is unpickled because it holds DEAP objects (hall of fame, logbook,
        history) that have no other faithful serialisation.  With ``log``, an
        unreadable checkpoint is moved aside to ``checkpoint.pkl.corrupt-N``
        (kept, not deleted), ``log`` says so, and None is returned: the journal
        alone replays the run.  Without it, the error propagates.
        """
        path = self.file(CHECKPOINT)
        if not path.exists():
            return None
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
                ValueError) as err:
            if log is None:
                raise
            aside = next(self.file(f"{CHECKPOINT}.corrupt-{n}") for n in range(1, 10**6)
                         if not self.file(f"{CHECKPOINT}.corrupt-{n}").exists())
            os.replace(path, aside)
            log(f"warning: {path} is unreadable ({type(err).__name__}: {err}); moved it to {aside.name} and "
                "replaying the run from the journal instead (finished evaluations are not retrained)")
            return None

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.file(name), text)
        return self.file(name)

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, to_json(value, indent=2) + "\n")
