"""The harmful-OE phenomenon on real CIFAR-10 (JPEG), with the reference code's network (issue 11's acceptance).

Runs ``oesearch evaluate`` as a user would, with ``docs/fidelity_cifar10.yaml`` on the reduced protocol of
docs/fidelity.md (the first 1,000 train and 200 test images of each class; airplane normal) over the
fidelity panel: at least one single OE image must score below 0.5 on every seed. A few minutes on 2 CPU
cores, so it is marked slow and left out of the default run:

    python -m pytest -q -m slow tests/test_fidelity_cifar.py -s   # -s shows the printed table
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, RUN_PY, unpack_cifar

pytestmark = pytest.mark.slow

PANEL = ("automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def reduced_tree(full: Path, dest: Path, train: int = 1000, test: int = 200) -> Path:
    """The first ``train`` / ``test`` files (sorted by name) of every class folder, copied."""
    for split, count in (("train", train), ("test", test)):
        for folder in sorted((full / split).iterdir()):
            target = dest / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, target / image.name)
    return dest


def test_a_panel_image_is_harmful_on_every_seed(tmp_path: Path, cache_dir: Path) -> None:
    root = reduced_tree(unpack_cifar(tmp_path), tmp_path / "cifar10-jpeg-reduced")
    images = [str(root / "test" / name / "0000.jpg") for name in PANEL]
    args = ["evaluate", "--no-progress", "--config", str(REPO / "docs" / "fidelity_cifar10.yaml"),
            "--set", f"data.normal.path={root}", "--set", f"data.cache_dir={cache_dir}", "--seeds", "3",
            "--out", str(tmp_path / "runs"), "--images", *images]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    result = subprocess.run([sys.executable, str(RUN_PY), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=1800)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["method"] == "hsc" and out["normal_class"] == 0 and len(out["seeds"]) == 3
    assert [Path(r["image"]).parent.name for r in out["results"]] == list(PANEL)
    harmful = [Path(r["image"]).parent.name for r in out["results"] if max(r["aucs"]) < 0.5]
    assert harmful, f"no panel image below 0.5 on every seed: {[(r['image'], r['aucs']) for r in out['results']]}"
