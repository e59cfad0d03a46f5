"""The experiment YAMLs in ``search_configs/``: one per paper experiment, each loadable and self-describing.

Every file opens with a comment header that names its source in the paper (``# Paper:``), the data it
needs (``# Data:``) and the exact command that runs it (``# Run:``). The table of docs/reproducing.md
("Reproducing the paper", linked from README) names every file, and every file the docs name exists.

The benchmark configs need the ``benchmark`` section, and the CLIP ones ``train.clip`` and the
``clip_zero_shot`` / ``bce_cl`` methods; ``test_loads`` fails for them until those are in
``oesearch.config``. The other tests read the YAML as plain data and hold either way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from oesearch.config import load_config
from oesearch.models import ModelSetup
from oesearch.training.settings import worker_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "search_configs"
README = ROOT / "README.md"
REPRODUCING = ROOT / "docs" / "reproducing.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FILES = sorted(CONFIG_DIR.glob("*.yaml"))
IDS = [path.stem for path in FILES]

# A paper source: a table, figure, appendix or section of the paper.
PAPER_SOURCE = re.compile(r"\b(Table|Figure|Appendix|Section) [0-9A-I]")
CLIP_METHODS = {"clip_zero_shot", "bce_cl"}


def header(path: Path) -> list[str]:
    """The leading comment lines of ``path``, continuation lines joined to the line they continue."""
    entries: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if line.startswith("#   ") and entries:  # an indented continuation
            entries[-1] += " " + text
        else:
            entries.append(text)
    return entries


def field(path: Path, name: str) -> str:
    """The header entry ``name:`` of ``path`` (e.g. ``Run``), failing the test when it is absent."""
    found = [entry[len(name) + 1:].strip() for entry in header(path) if entry.startswith(f"{name}:")]
    assert found, f"{path.name}: the header comment has no '# {name}:' line"
    return found[0]


def raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def path_values(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) under ``node`` whose key names a file or folder."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from path_values(v, k)
    elif key in ("path", "exclude", "weights", "cache_dir"):
        yield key, node


def test_there_are_paper_configs():
    assert len(FILES) >= 10, f"expected the paper's experiment configs in {CONFIG_DIR}, found {len(FILES)}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_loads(path):
    """Each file validates through the one config loader (benchmark and CLIP files need their branches)."""
    config = load_config(path)
    assert config.name == raw(path)["name"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_header_names_paper_source_data_and_its_own_command(path):
    paper = field(path, "Paper")
    assert PAPER_SOURCE.search(paper), f"{path.name}: '# Paper:' names no table, figure, appendix or section: {paper!r}"
    assert field(path, "Data"), f"{path.name}: '# Data:' is empty"
    run = field(path, "Run")
    assert f"search_configs/{path.name}" in run, f"{path.name}: its '# Run:' command runs another file: {run!r}"
    assert ("oesearch benchmark" in run) != ("oesearch/run.py" in run), \
        f"{path.name}: '# Run:' must use exactly one of `oesearch benchmark` and `python oesearch/run.py`"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_command_matches_sections(path):
    """A benchmark command needs a benchmark section (and no search one); a search needs a search section."""
    config = raw(path)
    if "oesearch benchmark" in field(path, "Run"):
        assert "benchmark" in config, f"{path.name} is run by `oesearch benchmark` but has no benchmark section"
        assert "search" not in config, f"{path.name}: a benchmark config with a search section is ambiguous"
        methods = config["benchmark"].get("methods")
        assert methods, f"{path.name}: benchmark.methods is empty"
        assert len(set(methods)) == len(methods), f"{path.name}: benchmark.methods repeats a method"
    else:
        assert "search" in config, f"{path.name} is run by oesearch/run.py but has no search section"
        assert "benchmark" not in config, f"{path.name}: a search config with a benchmark section"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_network_is_the_reference_setup_and_the_header_says_so(path):
    """Each config trains what the reference code trains (biases, affine BatchNorm, PyTorch's default init),
    bias-free only for dsad/dsvdd, and its header's '# Network:' line says which network it is."""
    config, text = raw(path), field(path, "Network")
    methods = set(config.get("benchmark", {}).get("methods", ())) or {config.get("train", {}).get("method", "hsc")}
    if methods <= CLIP_METHODS:
        assert "CLIP" in text and "model" not in config, path.name
        return
    assert config["model"] == {"bias": "auto", "batchnorm_affine": "auto", "init": "reference"}, path.name
    assert "PyTorch's default initialisation" in text and "dsvdd" in text, path.name
    spec = worker_spec(load_config(path))
    assert spec.settings.model == ModelSetup(bias=spec.method not in ("dsad", "dsvdd"),
                                             batchnorm_affine=spec.method not in ("dsad", "dsvdd"), init="reference")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_clip_methods_name_their_weights(path):
    config = raw(path)
    train = config.get("train", {})
    methods = set(config.get("benchmark", {}).get("methods", ())) | {train.get("method")}
    if methods & CLIP_METHODS:
        weights = train.get("clip", {}).get("weights")
        assert weights, f"{path.name} runs {sorted(methods & CLIP_METHODS)} but sets no train.clip.weights"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_paths_are_portable(path):
    """Data, weights and caches live under the user's home (``~/...``), never at one machine's absolute path."""
    for key, value in path_values(raw(path)):
        assert isinstance(value, str) and value.startswith("~/"), f"{path.name}: {key} {value!r} is not under ~/"


def test_names_are_unique():
    names = [raw(path)["name"] for path in FILES]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"experiment names used by more than one file (run directories would mix): {twice}"


def reproduction_table() -> str:
    """The experiment <-> config table of docs/reproducing.md: its rows, the lines that start with ``|``."""
    text = REPRODUCING.read_text()
    assert text.startswith("# Reproducing the paper\n"), f"{REPRODUCING} is not the 'Reproducing the paper' page"
    rows = [line for line in text.splitlines() if line.startswith("| ") and "search_configs/" in line]
    assert rows, f"{REPRODUCING} has no table naming search_configs/ files"
    return "\n".join(rows)


def test_reproduction_table_names_every_config():
    named = set(re.findall(r"search_configs/([\w.-]+\.yaml)", reproduction_table()))
    on_disk = {path.name for path in FILES}
    assert not on_disk - named, f"configs missing from docs/reproducing.md's table: {sorted(on_disk - named)}"
    assert not named - on_disk, f"docs/reproducing.md's table names missing configs: {sorted(named - on_disk)}"


@pytest.mark.parametrize("doc", DOCS, ids=[path.name for path in DOCS])
def test_every_config_the_docs_name_exists(doc):
    named = set(re.findall(r"search_configs/([\w.-]+\.yaml)", doc.read_text()))
    missing = sorted(name for name in named if not (CONFIG_DIR / name).is_file())
    assert not missing, f"{doc.relative_to(ROOT)} names configs that do not exist: {missing}"
