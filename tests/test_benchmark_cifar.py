"""The split protocol on real CIFAR-10 (JPEG): HSC and BCE beat DSVDD (issue 3's acceptance).

Runs ``search_configs/cifar10_split.yaml`` as a user would, on the archive in
``../shared/data`` (skipped when it is absent).  A few minutes on 2 CPU cores,
so it is marked slow and left out of the default run:

    python -m pytest -q -m slow tests/test_benchmark_cifar.py -s   # -s shows the printed table
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, RUN_PY, unpack_cifar

pytestmark = pytest.mark.slow


def test_cifar10_split_benchmark(tmp_path: Path, cache_dir: Path) -> None:
    root = unpack_cifar(tmp_path)

    args = ["benchmark", "--no-progress", "--config", str(REPO / "search_configs" / "cifar10_split.yaml"),
            "--set", f"data.normal.path={root}", "--set", f"data.cache_dir={cache_dir}", "--out", str(tmp_path / "runs")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    result = subprocess.run([sys.executable, str(RUN_PY), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1200)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    bench_dir = Path(result.stdout.strip().splitlines()[-1])

    results = pd.read_csv(bench_dir / "results.csv")
    assert (results["protocol"] == "split").all() and (results["status"] == "ok").all()
    assert len(results) == 1 * 3 * 2  # one class x (hsc, bce, dsvdd) x 2 seeds
    assert (results["oe_images"] == 4 * 5000).all(), "OE: every training image of the 4 OE classes"
    oe, test = set(results["oe_classes"].iloc[0].split()), set(results["test_classes"].iloc[0].split())
    assert len(oe) == 4 and len(test) == 5 and not oe & test
    assert (results["auc"] > 0.5).all(), results
    means = results.groupby("method")["auc"].mean()
    assert means["hsc"] > means["dsvdd"] and means["bce"] > means["dsvdd"], means
