"""cluster/*.yaml pass Ray's own launcher checks, and say what the README promises."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def checked(name: str) -> dict:
    """The config as `ray up` sees it: Ray's defaults filled in, then Ray's schema validation."""
    config = prepare_config(yaml.safe_load((CLUSTER / name).read_text()))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_configs_pass_rays_checks(name: str) -> None:
    config = checked(name)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head, "the dashboard is reached through an SSH tunnel only"
    assert any("[gpu]" in c for c in config["setup_commands"]), "workers get the package with its GPU extras"
    assert any(str(src).rstrip("/").endswith("search_configs") for src in config["file_mounts"].values())


def test_cloud_config_has_a_cpu_head_and_gpu_workers() -> None:
    config = checked("cluster.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}, "no fitness worker on the head"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5")) for t in workers.values())
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers.values())


def test_rays_checks_do_reject_a_broken_config() -> None:
    """The checks above can fail: a misspelt key is refused by Ray's schema."""
    config = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["max_worker"] = broken["available_node_types"]["gpu_1x"].pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
