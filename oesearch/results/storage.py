"""Run directories on shared storage.

``run.storage`` is either a path (a mounted shared file system: run
directories are created there and written in place) or a URI that pyarrow
understands, such as ``s3://bucket/runs`` or ``gs://bucket/runs``.  Object
stores cannot append and fsync a journal, so for a URI the run directory lives
on the head node and is mirrored to ``URI/<run name>/`` after every
generation and at the end.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_uri", "run_parent", "Mirror"]


def is_uri(storage: str) -> bool:
    return "://" in storage


def run_parent(out: str, storage: str | None) -> Path:
    """Where new run directories are created: the storage path, else ``run.out``."""
    return Path(storage if storage and not is_uri(storage) else out).expanduser()


class Mirror:
    """Copies a run directory to ``uri/<run name>/`` (whole files; later copies replace earlier ones)."""

    def __init__(self, uri: str, run_dir: Path) -> None:
        from pyarrow import fs

        self.run_dir = Path(run_dir)
        self.filesystem, base = fs.FileSystem.from_uri(uri.rstrip("/"))
        self.target = f"{base}/{self.run_dir.name}"
        self.filesystem.create_dir(self.target, recursive=True)

    def sync(self) -> None:
        from pyarrow import fs

        # Temporary files of atomic writes start with a dot and are never part of the record.
        for path in sorted(self.run_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                fs.copy_files(str(path), f"{self.target}/{path.name}", source_filesystem=fs.LocalFileSystem(),
                              destination_filesystem=self.filesystem)
