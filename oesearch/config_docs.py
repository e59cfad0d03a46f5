"""The configuration reference, docs/configuration.md, generated from the pydantic schema in ``oesearch.config``.

Every section and key of :class:`oesearch.config.Config` becomes a table row with its type, its default and
its ``Field`` description, so the reference cannot drift from the schema. The prose around the tables (how
``--set`` works, what the defaults are, notes the descriptions do not carry) lives in this module's template.

    python -m oesearch.config_docs            # rewrite docs/configuration.md
    python -m oesearch.config_docs --check    # exit 1 when docs/configuration.md is stale

Torch-free: it imports only ``oesearch.config``, pydantic and the standard library.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel

from oesearch import config as schema

__all__ = ["render", "main", "DEFAULT_OUTPUT"]

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Facts about keys that their Field descriptions do not (yet) carry, shown after the description. A key's
# entry can go once its description in oesearch/config.py says the same.
NOTES: dict[str, str] = {
    "name": "label of the experiment, used in run directory names",
    "data.normal": "normal data; its `kind` picks one of the sources below ([data sources](data.md))",
    "data.corpus": "the OE corpus; its `kind` picks one of the sources below; conformed to the normal images' "
                   "size and channels",
    "data.cache_dir": "decoded stores (`.npy`) and FAISS indexes are built once and reused",
    "train.method": "`hsc`, `bce`, `focal`, `dsad`, `dsvdd` (paper Section 4), `clip_zero_shot` or `bce_cl` "
                    "(Section 3.3, configured under `train.clip`). `dsad` and `dsvdd` use a centre c, the mean "
                    "initial output on the preprocessed training images (eps-fixed to ±0.1); `dsad`, `dsvdd` and "
                    "the CLIP methods train unpacked (`run.pack` 1 or `auto`); `dsvdd` is unsupervised and never "
                    "sees the OE images, so every candidate of a search scores the same (a baseline)",
    "train.hsc_radial": "HSC's radial function h",
    "train.epochs": "Adam schedule (calibrated with `oesearch signal`; see [the embedded default]"
                    "(method.md#the-embedded-default-and-how-it-differs-from-the-paper)); not used by the CLIP "
                    "methods",
    "train.lr": "Adam learning rate; ×0.1 at each milestone; not used by the CLIP methods",
    "train.milestones": "epochs at which the learning rate is multiplied by 0.1",
    "train.weight_decay": "Adam weight decay",
    "train.augment": "drawn from each training's seed; all off, as in the paper's searches",
    "train.augment.crop": "crops back at a random offset",
    "train.augment.flip": "mirrors half the images",
    "train.augment.brightness": "brightness is applied before contrast",
    "train.filter": "applied at the data's own size",
    "train.filter.kind": "`lpf` zeroes the first and last `magnitude` rows and columns of the shifted 2-D "
                         "spectrum, `hpf` its centred `magnitude` x `magnitude` block; the real part of the inverse "
                         "FFT is kept, as in the paper, so on even sizes a cut frequency whose mirror (-f) is kept "
                         "comes back at half amplitude (tested in the FFT domain)",
    "train.focal_alpha": "1−α weighs the normal class",
    "train.precision": "applies to every training, unpacked and packed; bf16 runs the forward passes of training "
                       "and test scoring under `torch.autocast` on the device's type and keeps float32 parameters, optimiser state, losses and scores; tf32 restores the "
                       "flags after the training. Only `fp32` reproduces earlier results bit for bit",
    "train.channels_last": "which tensor cores and oneDNN prefer for convolutions; same losses as the default to "
                           "float rounding; not with the CLIP methods (a config error)",
    "train.compile": "inductor: the first training in a worker process pays the compilation (about a minute cold "
                     "on the 2-core CPU VM for the 8x8 net), later trainings of the same shapes reuse the compiled "
                     "graph (seconds); results equal eager to float rounding; not with the CLIP methods (a config "
                     "error)",
    "train.clip.weights": "required by `clip_zero_shot` and `bce_cl`; checked before workers start",
    "train.clip.milestones": "BCE-CL: lr ×0.1 at each milestone",
    "search.mode": "`best` maximises the AUC, `worst` minimises it",
    "search.population": "distinct random images in the initial population",
    "search.tournament_size": "DEAP `selTournament`: the best (or worst) of this many aspirants, drawn with "
                              "replacement",
    "search.mate_chance": "chance that a pair (0,1),(2,3)… mates",
    "search.mutation_chance": "chance that an individual mutates",
    "search.pool": "`all`: global k-NN, a deviation from the paper",
    "search.oe_size": "mutation and mating act per position",
    "search.hall_of_fame": "individuals kept; the top 2 × this many race (`search.validation`)",
    "search.validation.max_seeds": "the paper configs use 16",
    "search.index.kind": "`flat` is exact (a draw costs O(pool x D), whatever the corpus size); past about 1M "
                         "corpus items `ivf` (k-means cells, `nprobe` of `nlist` searched per draw; exact when "
                         "`nprobe >= nlist`) or `ivfpq` (also compresses each vector to `pq_m` bytes; approximate "
                         "distances). With IVF a draw ranks only the pool members in the probed cells",
    "search.index.bound_dims": "the pruning runs in stages of an eighth, a quarter and all of the components",
    "run.seed": "every random number of the run descends from it",
    "run.gpus_per_worker": "GPU share per worker on a GPU cluster",
    "run.pack": "packed: grouped convolutions, batched matmuls, per-candidate BatchNorm and Adam state. A packed "
                "call that raises, hangs or loses its worker retries each of its trainings; a diverged candidate "
                "fails alone; AUCs of a rerun agree within ~0.01; `run.eval_timeout` bounds a whole call",
    # data sources, keyed by the source's (first) kind
    "tiny_images.count": "required above 2M records",
    "imagenet22k.per_class": "the paper uses 2 for CUB and DTD",
    "cifar100.labels": "`fine`: 100 classes, `coarse`: the 20 superclasses",
    "mvtec.category": "one of the 15 MVTec-AD categories; keep `data.normal_class: 0`",
    "benchmark.protocol": "see [protocols](data.md#protocols); `split` is a deviation from the paper",
    "benchmark.seeds": "training seed `derive_seed(run.seed, \"benchmark\", r)`, shared by classes and methods",
    "benchmark.oe_sizes": "`all`: the whole corpus, or the split's whole OE; `sweep`: `oe_size_sweep` of the "
                          "corpus size (under `split`, of the smallest class's OE)",
    "benchmark.oe_draw": "`images`: `oe_subset`; `classes`: `oe_classes` (Appendix A; k counts classes). Draws "
                         "come from `run.seed` and the repetition, the same for every class and method",
    "benchmark.split_oe_classes": "drawn from `run.seed` and the normal class; the rest are test anomalies",
    "benchmark.overrides": "nested sections (`augment`, `filter`) merge; validated like `train.*`",
}

INTRO = """\
# Configuration reference

<!-- Generated by `python -m oesearch.config_docs` from the pydantic schema in oesearch/config.py.
     Do not edit by hand: change the Field descriptions (or the template in oesearch/config_docs.py) and
     regenerate; tests/test_docs.py fails while this file is stale. -->

One YAML per experiment in `search_configs/`. `--set section.key=value` overrides any value (the value is
parsed as YAML, e.g. `--set 'train.milestones=[25]'`), and the dedicated flags (`--method`, `--mode`,
`--strategy`, `--seed`, `--out`, `--address`, `--storage`) win over both. Unknown keys are errors that list the
valid keys; bad values say what is allowed. The defaults below *are* the embedded default experiment
(`search_configs/embedded.yaml` spells them out). `config.yaml` in every run directory holds the fully
resolved config.

`search_configs/cifar10_imagefolder.yaml` holds the paper's search settings for CIFAR-10 stored as an
ImageFolder tree (for example the JPEG re-encoding: `tar xzf cifar10-jpeg.tar.gz -C ~/data`) with any
ImageFolder OE corpus. `search_configs/table3_cifar10_80mti.yaml` has the same settings with the paper's data:
the CIFAR-10 python batches and the 300K random 80MTI images (or `tiny_images.bin`). Every experiment of the
paper has its own file: see [Reproducing the paper](reproducing.md).

Sections: {sections}.
"""

SECTION_PROSE: dict[str, str] = {
    "data": "Every source is decoded once into a uint8 store cached under `data.cache_dir`; nothing is "
            "downloaded. What each `path` must hold and where to get it: [data sources](data.md).",
    "train": "The settings of every training: a search's fitness, a benchmark cell, `evaluate` and `signal`. "
             "`train.epochs`, `train.lr`, `train.milestones` and `train.batch_size` do not apply to the CLIP "
             "methods, which use `train.clip`.",
    "model": "Bias-free for `dsad`/`dsvdd` by default (see [Networks](method.md#networks)). The bias-free Xavier network of earlier "
             "oesearch versions is `--set model.bias=false --set model.batchnorm_affine=false --set "
             "model.init=as_written`.",
    "search": "The evolutionary search (`oesearch search`); see [what a run does](method.md) and "
              "[trusting a result](trust.md). `search.validation_seeds` of earlier versions is an error that "
              "says what replaced it.",
    "run": "Where and how a run executes; see [running on a cluster](cluster.md).",
    "benchmark": "Read by `oesearch benchmark` only ([benchmarks](benchmark.md)), which trains every cell with "
                 "the `train` section, `train.method` replaced by each method. Bad values fail before anything is written or started: an "
                 "unknown key, protocol or method, a class out of range, an OE size larger than the corpus (or "
                 "the split's OE), too many split OE classes, an override the `train` section would refuse.",
}


# --- rendering types and defaults ----------------------------------------------------------------------


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models of a (possibly ``Annotated``) discriminated union, else []."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if _is_model(a)]
        if len(members) > 1 and all("kind" in m.model_fields for m in members):
            return members
    return []


def _kinds(model: type[BaseModel]) -> tuple[str, ...]:
    return typing.get_args(model.model_fields["kind"].annotation)


def _type(annotation: Any) -> str:
    """A short, readable name of a field's type: ``int``, ``float or null``, ``list of int``, ``a | b``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        if _union_models(annotation):
            return "source (by `kind`)"
        return " or ".join(_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _type(args[0])
            return f"list of ({item})" if " or " in item else f"list of {item}"
        return "list"
    if origin is dict:
        return f"mapping {_type(args[0])} → {_type(args[1])}"
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if annotation is typing.Any:
        return "any"
    if _is_model(annotation):
        return "section"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _flow(value: Any) -> str:
    """A value in YAML flow style, as one would write it after ``--set key=``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if value and value.strip() == value and ":" not in value and "," not in value else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return f"`{_flow(_plain(info.default_factory()))}`"
    if info.is_required():
        return "required"
    return f"`{_flow(_plain(info.default))}`"


def _cell(text: str) -> str:
    """Text that stays inside one cell of a markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _description(key: str, info: Any) -> str:
    parts = [p.strip().rstrip(".") for p in (info.description or "", NOTES.get(key, "")) if p and p.strip()]
    return _cell("; ".join(parts))


# --- the document ---------------------------------------------------------------------------------------


def _table(prefix: str, model: type[BaseModel], nested: list[tuple[str, type[BaseModel]]]) -> list[str]:
    """The rows of ``model``'s scalar keys; nested sections are appended to ``nested`` for their own table."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_model(info.annotation):
            nested.append((key, info.annotation))
            note = _description(key, info)
            rows.append(f"| `{key}` | section | | see [`{key}`](#{_anchor(key)}){'; ' + note if note else ''} |")
        elif _union_models(info.annotation):
            nested.append((key, info.annotation))
            rows.append(f"| `{key}` | source (by `kind`) | `{_flow(_plain(info.default))}` | "
                        f"{_description(key, info)}; see [`{key}`](#{_anchor(key)}) |")
        else:
            rows.append(f"| `{key}` | {_type(info.annotation)} | {_default(info)} | {_description(key, info)} |")
    return rows


def _anchor(key: str) -> str:
    """GitHub's anchor of a heading that reads ``key`` in code (``train.clip`` → ``trainclip``)."""
    return "".join(c for c in key.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "`")


def _section(key: str, model: type[BaseModel], level: int) -> list[str]:
    lines = [f"{'#' * level} `{key}`", ""]
    prose = " ".join(p for p in (_doc(model), SECTION_PROSE.get(key, "")) if p)
    if prose:
        lines += [prose, ""]
    nested: list[tuple[str, Any]] = []
    lines += _table(key, model, nested)
    lines.append("")
    for sub_key, sub in nested:
        if _is_model(sub):
            lines += _section(sub_key, sub, level + 1)
        else:
            lines += _sources(sub_key, _union_models(sub), level + 1)
    return lines


def _sources(key: str, members: list[type[BaseModel]], level: int) -> list[str]:
    kinds = ", ".join(f"`{k}`" for m in members for k in _kinds(m))
    lines = [f"{'#' * level} `{key}`", "", f"`{key}.kind` is one of {kinds}; the other keys depend on it.", ""]
    for model in members:
        label = ", ".join(f"`{k}`" for k in _kinds(model))
        lines += [f"- **{label}**: {_doc(model)}", ""]
        rows = [(n, i) for n, i in model.model_fields.items() if n != "kind"]
        if rows:
            lines += ["  | key | type | default | meaning |", "  |---|---|---|---|"]
            lines += [f"  | `{n}` | {_type(i.annotation)} | {_default(i)} | "
                      f"{_description(f'{_kinds(model)[0]}.{n}', i)} |" for n, i in rows]
            lines.append("")
    return lines


def render() -> str:
    """docs/configuration.md as markdown: the template's prose around one table per config section."""
    top = schema.Config
    sections = [(n, i.annotation) for n, i in top.model_fields.items() if _is_model(i.annotation)]
    lines = [INTRO.format(sections=", ".join(f"[`{n}`](#{_anchor(n)})" for n, _ in sections)), "## Top level", ""]
    scalars = type("TopLevel", (), {"model_fields": {n: i for n, i in top.model_fields.items()
                                                     if not _is_model(i.annotation)}})
    lines += _table("", scalars, [])  # type: ignore[arg-type]
    lines.append("")
    for name, model in sections:
        lines += _section(name, model, 2)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oesearch.config_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the schema's reference")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else None
        if current != text:
            print(f"{args.output} is stale: run `python -m oesearch.config_docs` to regenerate it", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
