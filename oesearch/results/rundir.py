"""The run directory: created fresh for every run, never overwritten, written atomically.

``journal.jsonl`` is append-only: each finished evaluation is one JSON line,
flushed and fsynced before the search moves on, so a run killed at any moment
loses at most the line being written (which the reader then ignores).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text", "read_journal"]

JOURNAL = "journal.jsonl"
CHECKPOINT = "checkpoint.pkl"
CONFIG = "config.yaml"


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
    rows = []
    if not Path(path).exists():
        return rows
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class RunDir:
    """Paths and durable writes of one run directory."""

    journal_name = JOURNAL  # the append-only journal's file name (a benchmark's is results.jsonl)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._journal = None

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
        return read_journal(self.file(self.journal_name))

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
            with open(path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # checkpoint ------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write_bytes(self.file(CHECKPOINT), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None before the first generation finished.

        The file is this project's own (written by :meth:`save_checkpoint`);
        it is unpickled because it holds DEAP objects (hall of fame, logbook,
        history) that have no other faithful serialisation.
        """
        path = self.file(CHECKPOINT)
        if not path.exists():
            return None
        with open(path, "rb") as f:
            return pickle.load(f)

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.file(name), text)
        return self.file(name)

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, to_json(value, indent=2) + "\n")
