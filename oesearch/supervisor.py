"""The command line's watcher: the search runs in a child process, and its death is explained.

When the Ray cluster a driver joined goes away, Ray ends the driver process
at once (exit code 1, no Python exception, no message), so the driver cannot
say so itself.  :func:`supervise` runs it as a child, never touches Ray, and
outlives it to say what happened and how to resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["supervise", "supervised", "tell_supervisor"]

_SUPERVISED = "OESEARCH_SUPERVISOR_STATUS"  # set in the driver process: where it tells its supervisor what it runs


def supervised() -> bool:
    """True in the driver process that :func:`supervise` started."""
    return _SUPERVISED in os.environ


def tell_supervisor(rundir, cluster, command: str = "python oesearch/run.py") -> None:
    """Tell the supervising process which run directory this driver writes, where, and how it resumes."""
    status = os.environ.get(_SUPERVISED)
    if status:
        Path(status).write_text(json.dumps({"run_dir": str(rundir.path), "command": command,
                                            "where": cluster.where() if cluster else "the Ray cluster"}))


def supervise(argv: list[str]) -> int:
    """Run the search in a child process and explain its death.

    When the Ray cluster a driver joined goes away, Ray ends the driver
    process at once (exit code 1, no Python exception, no message).  This
    process, which never touches Ray, outlives it and says what happened and
    how to resume.  The child dies with it (``PR_SET_PDEATHSIG``), and its
    private Ray instance with the child (see :mod:`oesearch.distributed.cluster`).
    """
    import tempfile

    fd, status = tempfile.mkstemp(prefix="oesearch-driver-", suffix=".json")
    os.close(fd)
    env = {**os.environ, _SUPERVISED: status, "OESEARCH_SYS_PATH": json.dumps(sys.path)}
    code = "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('OESEARCH_SYS_PATH')); " \
           "from oesearch.cli import main; sys.exit(main(sys.argv[1:]))"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child, which decides
    try:
        child = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, preexec_fn=_die_with_parent)
        rc = child.wait()
        if rc in (0, 2, -signal.SIGINT, 128 + signal.SIGINT):  # done, explained, or stopped by the user
            return rc
        info = json.loads(Path(status).read_text() or "{}")
    finally:
        signal.signal(signal.SIGINT, previous)
        Path(status).unlink(missing_ok=True)
    how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
    if "run_dir" not in info:
        print(f"error: the search's driver process {how} before its run directory existed; nothing was "
              "written. Its output above says why.", file=sys.stderr)
        return 2
    from oesearch.results import read_journal

    run_dir = Path(info["run_dir"])
    journals = [run_dir / "journal.jsonl"] if (run_dir / "journal.jsonl").exists() else \
        sorted(run_dir.glob("searches/*/journal.jsonl"))  # a campaign's searches
    rows = [row for journal in journals for row in read_journal(journal)]
    cause = ("Ray ends a driver this way when the cluster it joined shuts down or loses its head node"
             if rc == 1 else "a kill from outside, such as the out-of-memory killer, does this")
    print(f"error: the search's driver process {how} while running on {info['where']} ({cause}). Nothing finished "
          f"is lost: {len(rows)} evaluations are in {_where(run_dir, journals)}. Continue it on a private Ray "
          f"instance on this machine with: {info.get('command', 'python oesearch/run.py')} --resume {run_dir} "
          "--address local "
          "(or give --address of a live cluster instead of local).", file=sys.stderr)
    return 2


def _where(run_dir: Path, journals: list[Path]) -> str:
    return str(run_dir / "journal.jsonl") if len(journals) <= 1 else f"the journals of {run_dir / 'searches'}"


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the supervisor dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


