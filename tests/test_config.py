"""Configuration: defaults, validation messages, --set overrides, YAML reading and the CLI's error path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from oesearch.cli import build_parser, main, resolve_config
from oesearch.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    read_yaml,
)

EMBEDDED_YAML = Path(__file__).resolve().parents[1] / "search_configs" / "embedded.yaml"


def test_defaults_validate_and_round_trip() -> None:
    default = Config()
    assert config_from_dict({}) == default
    assert load_config() == default
    assert config_from_dict(config_to_dict(default)) == default
    # Through YAML text as well, the way a run directory stores its config.
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(default)))) == default


def test_defaults_are_the_embedded_experiment() -> None:
    # The embedded default needs no download: sklearn digits as normal data, photo patches as OE.
    default = Config()
    assert default.data.normal.kind == "digits" and default.data.corpus.kind == "natural_patches"
    assert default.run.address is None  # a local Ray instance
    # DEAP tournament of the paper's size 3 (SPEC section 2).
    assert default.search.tournament_size == 3


def test_embedded_yaml_equals_the_defaults() -> None:
    if not EMBEDDED_YAML.exists():
        pytest.skip(f"{EMBEDDED_YAML} not written yet")
    assert load_config(EMBEDDED_YAML) == Config()


@pytest.mark.parametrize("path", sorted(EMBEDDED_YAML.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    return str(err.value)


def test_unknown_key_lists_the_valid_keys_of_its_section() -> None:
    message = _error({"search": {"popsize": 32}})
    assert "unknown key 'search.popsize'" in message
    for key in ("population", "generations", "tournament_size", "mate_chance", "pool", "k_nearest"):
        assert key in message
    # Keys of other sections are not offered.
    assert "epochs" not in message and "milestones" not in message

    message = _error({"train": {"lr_rate": 0.1}})
    assert "unknown key 'train.lr_rate'" in message
    assert "lr" in message and "milestones" in message and "population" not in message


def test_unknown_key_in_a_source() -> None:
    message = _error({"data": {"normal": {"kind": "digits", "test_frac": 0.3}}})
    assert "unknown key 'data.normal.test_frac'" in message
    assert "test_fraction" in message and "split_seed" in message


def test_unknown_top_level_section() -> None:
    message = _error({"serch": {"population": 4}})
    assert "unknown key 'serch'" in message
    for section in ("data", "train", "search", "run"):
        assert section in message


def test_bad_literal_lists_the_allowed_values() -> None:
    message = _error({"train": {"method": "ocsvm"}})
    assert "train.method" in message and "'ocsvm'" in message
    for method in ("hsc", "bce", "focal", "dsad", "dsvdd"):
        assert f"'{method}'" in message
    message = _error({"search": {"mode": "median"}})
    assert "search.mode" in message and "'best'" in message and "'worst'" in message
    message = _error({"data": {"normal": {"kind": "svhn"}}})
    assert "'digits'" in message and "'imagefolder'" in message and "'cifar10'" in message and "'mnist'" in message
    message = _error({"data": {"normal": {"kind": "tiny_images", "path": "x"}}})  # a corpus, not normal data
    assert "data.normal" in message and "'tiny_images'" in message and "'cifar100'" in message


def test_unknown_key_lists_the_keys_of_that_source_kind() -> None:
    message = _error({"data": {"corpus": {"kind": "imagenet22k", "path": "x", "exclude": "y", "count": 3}}})
    assert "unknown key 'data.corpus.count'" in message
    assert "valid keys here: exclude, kind, path, per_class, size, subset_seed" in message


def test_bad_numbers() -> None:
    message = _error({"search": {"population": -4}})
    assert "search.population" in message and "greater than or equal to 2" in message
    message = _error({"train": {"epochs": 10, "milestones": [5, 20]}})
    assert "milestones [5, 20] must lie in [1, epochs=10]" in message
    message = _error({"search": {"pool": 10, "k_nearest": 50}})
    assert "k_nearest 50 exceeds pool 10" in message
    assert "pool must be a positive integer or 'all'" in _error({"search": {"pool": 0}})
    assert "search.pool" in _error({"search": {"pool": "some"}})
    assert "tournament_size 5 exceeds population 4" in _error({"search": {"population": 4, "tournament_size": 5}})
    # Within bounds the same keys are accepted: milestones == epochs, k == pool, pool 'all'.
    ok = config_from_dict({"train": {"epochs": 10, "milestones": [10]}, "search": {"pool": 50, "k_nearest": 50}})
    assert ok.train.milestones == (10,) and ok.search.pool == 50
    assert config_from_dict({"search": {"pool": "all", "k_nearest": 5000}}).search.pool == "all"


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict([1, 2])  # type: ignore[arg-type]


def test_set_overrides_parse_values_as_yaml() -> None:
    raw = apply_overrides({"search": {"population": 8}}, [
        "search.pool=all",
        "train.milestones=[10,20]",
        "train.epochs=30",
        "search.mode=best",
        "run.address=null",
        "data.normal.kind=cifar10",
        "data.normal.path=/tmp/x",
    ])
    assert raw == {
        "search": {"population": 8, "pool": "all", "mode": "best"},
        "train": {"milestones": [10, 20], "epochs": 30},
        "run": {"address": None},
        "data": {"normal": {"kind": "cifar10", "path": "/tmp/x"}},
    }
    config = config_from_dict(raw)
    assert config.search.pool == "all" and config.train.milestones == (10, 20)
    assert config.data.normal.kind == "cifar10"


def test_set_does_not_modify_its_input() -> None:
    raw = {"search": {"population": 8}}
    apply_overrides(raw, ["search.population=16"])
    assert raw == {"search": {"population": 8}}


def test_malformed_set() -> None:
    with pytest.raises(ConfigError, match=r"--set expects key=value, got 'foo'"):
        apply_overrides({}, ["foo"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        apply_overrides({}, ["=3"])
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_load_config_applies_overrides_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\nsearch:\n  population: 8\n  generations: 2\n")
    config = load_config(path, ["search.population=16"])
    assert (config.name, config.search.population, config.search.generations) == ("exp", 16, 2)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_read_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        read_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        read_yaml(listing)


def test_cli_flags_win_over_set_and_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("search:\n  mode: best\n  population: 8\nrun:\n  seed: 3\n")
    args = build_parser().parse_args(
        ["--config", str(path), "--set", "search.mode=best", "--mode", "worst", "--seed", "7",
         "--method", "bce", "--out", str(tmp_path / "runs")]
    )
    config = resolve_config(args)
    assert config.search.mode == "worst"
    assert config.train.method == "bce"
    assert config.run.seed == 7
    assert config.run.out == str(tmp_path / "runs")
    assert config.search.population == 8


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "search.popsize=3"], "unknown key 'search.popsize'"),
        (["--set", "foo"], "--set expects key=value"),
        (["--config", "/nonexistent/exp.yaml"], "config file not found"),
        (["--set", "train.epochs=10", "--set", "train.milestones=[20]"], "must lie in [1, epochs=10]"),
    ],
)
def test_cli_reports_config_errors_with_exit_code_2(argv: list[str], expected: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Config errors come from resolve_config, before a run directory is created or Ray started.
    out = tmp_path / "runs"
    code = main([*argv, "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ")
    assert expected in captured.err
    assert captured.out == ""
    assert not out.exists()  # no run directory was made

    import ray

    assert not ray.is_initialized()


def test_augment_and_filter_are_off_by_default_and_strict() -> None:
    from oesearch.training.settings import worker_spec

    default = worker_spec(Config())
    assert not default.settings.augment.active and default.filter is None
    message = _error({"train": {"augment": {"crop": 4, "rotate": 10}}})
    assert "unknown key 'train.augment.rotate'" in message and "flip" in message and "noise" in message
    assert "train.augment.crop" in _error({"train": {"augment": {"crop": -1}}})
    assert "train.filter.kind" in _error({"train": {"filter": {"kind": "bandpass"}}})
    spec = worker_spec(load_config(None, ["train.augment.crop=4", "train.augment.flip=true",
                                          "train.filter.kind=hpf", "train.filter.magnitude=14"]))
    assert spec.settings.augment.crop == 4 and spec.settings.augment.flip and spec.filter == ("hpf", 14)


def test_index_section_is_strict() -> None:
    assert Config().search.index.kind == "flat"
    assert "unknown key 'search.index.probes'" in _error({"search": {"index": {"probes": 3}}})
    assert "search.index.kind" in _error({"search": {"index": {"kind": "hnsw"}}})
    assert "run.pack" in _error({"run": {"pack": 0}})


def test_new_methods_and_focal_keys() -> None:
    from oesearch.training.settings import worker_spec

    config = config_from_dict({"train": {"method": "focal", "focal_gamma": 1.0, "focal_alpha": 0.25}})
    spec = worker_spec(config)
    assert (spec.method, spec.focal_gamma, spec.focal_alpha) == ("focal", 1.0, 0.25)
    default = config_from_dict({})
    assert (default.train.focal_gamma, default.train.focal_alpha) == (2.0, 0.5)
    assert "train.focal_alpha" in _error({"train": {"focal_alpha": 1.5}})
    assert "train.focal_gamma" in _error({"train": {"focal_gamma": -1}})
    for method in ("dsad", "dsvdd"):
        assert config_from_dict({"train": {"method": method}, "run": {"pack": "auto"}}).train.method == method
        assert "trains unpacked only" in _error({"train": {"method": method}, "run": {"pack": 4}})


def test_the_old_validation_seeds_key_says_what_replaced_it() -> None:
    message = _error({"search": {"validation_seeds": 5}})
    assert "search.validation_seeds is now search.validation" in message and "scheme: fixed, seeds: 5" in message
    race = _error({"search": {"validation": {"seeds": 9, "max_seeds": 8}}})
    assert "seeds 9 must lie in [1, max_seeds=8]" in race
    assert "rescore: survivors applies to strategy evolution only" in _error(
        {"search": {"rescore": "survivors", "strategy": "random"}})
    assert "aging_batch 20 exceeds population 16" in _error({"search": {"strategy": "aging", "aging_batch": 20}})
    aging = config_from_dict({"search": {"strategy": "aging", "population": 10}}).search
    assert aging.children_per_generation == 5
