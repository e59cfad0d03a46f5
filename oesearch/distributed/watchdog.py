"""Kill a dead driver's private Ray instance: ``python watchdog.py DRIVER_PID ROOT_PID...``.

Started by :func:`oesearch.distributed.cluster.connect` with a pipe on stdin whose
only writer is the driver: end of file means the driver is gone, however it
died.  Meanwhile it notes every process under the instance's roots (GCS,
raylet, dashboard...), because once the raylet dies its agents are reparented
and no longer findable as its children.  Run as a plain script (not through
the package) so that it starts in a fraction of a second and imports only psutil.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, where the package's own modules (signal.py,
# statistics.py) would shadow the standard library's for psutil and threading.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import threading  # noqa: E402

import psutil  # noqa: E402


def main(argv: list[str]) -> int:
    roots = [int(p) for p in argv[1:]]  # argv[0], the driver's pid, names it in `ps`
    seen: dict[int, float] = {}  # pid -> create time, so that a reused pid is never killed
    gone = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), gone.set()), daemon=True).start()

    def note() -> None:
        for pid in roots:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    seen.setdefault(proc.pid, proc.create_time())
            except psutil.Error:
                continue

    while not gone.wait(0.5):
        note()
    note()  # the driver is gone (after ray.shutdown nothing is left to find): its instance goes with it
    victims = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()
                victims.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(victims, timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
