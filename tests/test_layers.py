"""The package's imports only run down its layers (docs/extending.md, "Layers").

Every ``import`` and ``from ... import`` in every module counts, including the
lazy ones inside functions: a lazy import hides a circle from Python, not from
the design.  A module may import its own room (package) and any room listed
before it; anything after it is an upward import and fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "oesearch"

# The rooms, lowest first. A room may import itself and the rooms above it in this list.
LAYERS = [
    "methods",      # the method registry (torch-free)
    "seeding",      # every seed derives from run.seed
    "config",       # the pydantic schema (torch-free)
    "config_docs",  # docs/configuration.md from the schema
    "data",         # normal data and OE corpora
    "models",       # the networks
    "training",     # one trainer, objectives, packing, the config bridge
    "search",       # what the search is: evolution, neighbours, fitness, statistics, validation
    "sweep",        # benchmark grids and their tables
    "results",      # the run directory and its files
    "distributed",  # Ray: cluster, Dispatcher, workers, metrics
    "experiments",  # the composition layer: one run context, thin roots
    "analysis",     # reading runs back: tables, plots, the HTML report
    "supervisor",   # the command line's watcher process
    "cli",          # oesearch search|benchmark|evaluate|signal|report
    "run",          # python oesearch/run.py
]
RANK = {room: i for i, room in enumerate(LAYERS)}


def room_of(module: str) -> str | None:
    """``oesearch.search.evolution`` -> ``search``; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "oesearch" and len(parts) > 1 else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every import in ``tree``; ``from oesearch import config`` names ``oesearch.config``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "oesearch":
                found += [(node.lineno, f"oesearch.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def violations(module: str, source: str) -> list[str]:
    """Upward imports of ``module`` (a dotted name) whose text is ``source``."""
    own = room_of(module)
    if own not in RANK:
        return [f"{module}: room {own!r} is not in LAYERS; add it where it belongs"]
    bad = []
    for line, target in imported_modules(ast.parse(source)):
        room = room_of(target)
        if room is None or room == own:
            continue
        if room not in RANK:
            bad.append(f"{module}:{line} imports {target}, whose room {room!r} is not in LAYERS")
        elif RANK[room] > RANK[own]:
            bad.append(f"{module}:{line} imports {target}: {own} sits below {room}")
    return bad


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_no_module_imports_up_the_layers() -> None:
    modules = package_modules()
    assert len(modules) > 50, "the walk must see the whole package"
    bad = [v for name, path in modules.items() if name != "oesearch" for v in violations(name, path.read_text())]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_every_room_of_the_package_has_a_layer() -> None:
    rooms = {room_of(name) for name in package_modules()} - {None}
    assert rooms == set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}; " \
                                 f"layers without a room: {sorted(set(LAYERS) - rooms)}"


@pytest.mark.parametrize("source, upward", [
    ("from oesearch.analysis.html_report import write_report", True),   # the search's old report call
    ("def f():\n    import oesearch.experiments.search\n", True),       # lazy imports count
    ("from oesearch import cli", True),
    ("from oesearch.training import TrainSettings", False),
    ("from oesearch.search.fitness import Job", False),                 # its own room
    ("import numpy as np", False),
])
def test_the_checker_sees_upward_imports(source: str, upward: bool) -> None:
    assert bool(violations("oesearch.search.problem", source)) == upward


def test_the_layer_order_is_the_documented_one() -> None:
    """docs/extending.md's "Layer order" list is this one: it is what a contributor reads."""
    text = (PACKAGE.parent / "docs" / "extending.md").read_text()
    section = text.split("## Layer order", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. `(\w+)`", section, flags=re.MULTILINE)
    assert listed == LAYERS
