"""Bad input fails before anything is written: a clear message, exit code 2, no run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config, write_config
from oesearch.cli import main


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.normal_class=12"], "normal class 12 is out of range; this dataset has 10 classes"),
        (["search.pool=20000"], "search.pool=20000 exceeds the corpus of 10712 images"),
        (["data.normal.kind=imagefolder", "data.normal.path=/no/such/dataset"], "/no/such/dataset/train"),
        (["data.corpus={kind: cifar10, path: /no/such/cifar}"], "data_batch_1"),
        (["search.strategy=random", "search.population=5000", "search.generations=3", "search.pool=100",
          "search.hall_of_fame=1"], "random search's budget needs 20000 distinct corpus images"),
    ],
)
def test_bad_data_or_values_fail_cleanly(overrides: list[str], message: str, tmp_path: Path, cache_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    args = ["--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "runs").exists(), "nothing is written for a run that cannot start"
