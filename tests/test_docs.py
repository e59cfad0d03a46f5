"""The documentation holds together: a short README that reaches every docs/ page, links that resolve, and a
configuration reference that is exactly what the pydantic schema generates.

Fast and torch-free: it reads markdown files and imports only ``oesearch.config`` and ``oesearch.config_docs``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from oesearch import config as schema
from oesearch import config_docs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, *PAGES]
README_LIMIT = 12 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """``text`` without fenced code blocks (their ``#`` lines are no headings, their brackets no links)."""
    return FENCE.sub("", text)


def links(path: Path) -> list[str]:
    """Every link target in ``path``'s prose: ``[text](target)`` and ``![alt](target)``."""
    text = prose(path.read_text())
    # Inline code may hold brackets (`--set 'x=[25]'`); a link's own text may be code, so blank code spans
    # to a placeholder instead of deleting them.
    text = INLINE_CODE.sub("code", text)
    return LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def resolve(source: Path, target: str) -> tuple[Path, str]:
    file, _, anchor = target.partition("#")
    return (source if not file else (source.parent / file).resolve()), anchor


# --- README ---------------------------------------------------------------------------------------------


def test_readme_is_at_most_12_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, more than {README_LIMIT}: move detail into docs/"


def test_readme_keeps_the_two_commands_word_for_word():
    text = README.read_text()
    assert 'pip install -e ".[test]" && python oesearch/run.py --method hsc --mode worst' in text
    assert "\npython -m pytest -q\n" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q\n" in ci, ".ci/run must run the exact test command README gives"


def test_every_docs_page_is_linked_from_readme():
    linked = {resolve(README, target)[0] for target in links(README) if not EXTERNAL.match(target)}
    unlinked = [page.name for page in PAGES if page.resolve() not in linked]
    assert not unlinked, f"docs pages README.md does not link to: {unlinked}"


def test_the_outputs_come_before_the_cluster_guide_in_readme():
    """A newcomer finds the outputs without scrolling past the cluster guide."""
    text = README.read_text()
    assert text.index("](docs/outputs.md)") < text.index("](docs/cluster.md)")


# --- links ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MARKDOWN, ids=[p.name for p in MARKDOWN])
def test_relative_links_resolve(path):
    broken = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file, anchor = resolve(path, target)
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading '#{anchor}' in {file.name})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_link_checker_catches_a_broken_file_and_anchor(tmp_path):
    """The checker itself: a missing file and a missing heading are both caught, a good pair passes."""
    (tmp_path / "b.md").write_text("# Title\n\n## Some `code` heading's name\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#some-code-headings-name) [bad](b.md#not-a-heading) [gone](c.md) "
                    "`[not](a-link.md)` [web](https://example.org/x)\n")
    targets = [t for t in links(page) if not EXTERNAL.match(t)]
    assert targets == ["b.md#some-code-headings-name", "b.md#not-a-heading", "c.md"]
    assert anchors(tmp_path / "b.md") == {"title", "some-code-headings-name"}
    assert not (tmp_path / "c.md").exists()


# --- the configuration reference -----------------------------------------------------------------------


def test_configuration_reference_is_not_stale():
    generated = config_docs.render()
    current = (DOCS / "configuration.md").read_text()
    assert current == generated, ("docs/configuration.md differs from the schema in oesearch/config.py: "
                                  "run `python -m oesearch.config_docs` and commit the result")


def issubclass_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def schema_keys(model: type[BaseModel] = schema.Config, prefix: str = "") -> list[str]:
    """Every section key of the schema, dotted (``train.clip.lr``); data sources are listed per kind."""
    keys = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if issubclass_model(info.annotation):
            keys += schema_keys(info.annotation, f"{key}.")
    return keys


def test_reference_has_a_row_for_every_key():
    text = config_docs.render()
    sections = [n for n, i in schema.Config.model_fields.items() if issubclass_model(i.annotation)]
    assert sections and all(f"\n## `{name}`\n" in text for name in sections), sections
    missing = [key for key in schema_keys() if key not in sections and f"| `{key}` |" not in text]
    assert not missing, f"keys without a row in the reference: {missing}"
    for union in (schema.NormalSource, schema.CorpusSource):
        for source in union.__origin__.__args__:
            for kind in source.model_fields["kind"].annotation.__args__:
                assert f"`{kind}`" in text, f"data source kind {kind} is not in the reference"


def test_reference_carries_every_field_description():
    text = config_docs.render()
    missing = []
    for model in [schema.Config, *{m for m in vars(schema).values()
                                   if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel}]:
        for name, info in model.model_fields.items():
            if info.description and " ".join(info.description.split()).replace("|", "\\|") not in text:
                missing.append(f"{model.__name__}.{name}")
    assert not missing, f"Field descriptions the reference leaves out: {missing}"


def test_a_changed_description_makes_the_committed_reference_stale(monkeypatch):
    """The staleness test bites: edit one Field description and the committed page no longer matches."""
    info = schema.TrainConfig.model_fields["lr"]
    monkeypatch.setattr(info, "description", "a description that is not in the committed page")
    generated = config_docs.render()
    assert "a description that is not in the committed page" in generated
    assert generated != (DOCS / "configuration.md").read_text()


def test_a_changed_default_makes_the_committed_reference_stale(monkeypatch):
    info = schema.SearchConfig.model_fields["population"]
    monkeypatch.setattr(info, "default", 1234)
    generated = config_docs.render()
    assert "| `search.population` | int | `1234` |" in generated
    assert generated != (DOCS / "configuration.md").read_text()


def test_check_mode_exits_nonzero_on_a_stale_file_and_the_writer_fixes_it(tmp_path, capsys):
    out = tmp_path / "configuration.md"
    out.write_text(config_docs.render().replace("generations after the initial one", "an edit by hand"))
    assert config_docs.main(["--check", "--output", str(out)]) == 1
    assert "stale" in capsys.readouterr().err
    assert config_docs.main(["--output", str(out)]) == 0
    assert out.read_text() == config_docs.render()
    assert config_docs.main(["--check", "--output", str(out)]) == 0
    assert config_docs.main(["--check", "--output", str(tmp_path / "absent.md")]) == 1


def test_generator_is_torch_free():
    code = ("import sys, oesearch.config_docs as d; d.render(); "
            "heavy = sorted(m for m in ('torch', 'ray', 'faiss', 'deap') if m in sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_template_note_names_a_key_of_the_schema():
    """A note on a renamed or removed key would silently drop out of the page: each must name a real key."""
    keys = set(schema_keys())
    for union in (schema.NormalSource, schema.CorpusSource):
        for source in union.__origin__.__args__:
            kind = source.model_fields["kind"].annotation.__args__[0]
            keys |= {f"{kind}.{name}" for name in source.model_fields}
    orphans = sorted(set(config_docs.NOTES) - keys)
    assert not orphans, f"NOTES in oesearch/config_docs.py for keys the schema lacks: {orphans}"
