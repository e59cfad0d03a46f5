"""``oesearch benchmark``: classes x methods x OE sizes x seeds through Ray, one table.

    oesearch benchmark                                       # the embedded default (digits, all five methods)
    oesearch benchmark --config search_configs/cifar10_split.yaml --set benchmark.seeds=2
    oesearch benchmark --resume runs/20261129-031500-benchmark-embedded
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from oesearch.config import ConfigError, apply_overrides, config_from_dict, read_yaml
from oesearch.data import DataError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oesearch benchmark",
        description="Run a benchmark: every class x method x OE size x seed of the config's `benchmark` section is "
        "one training and test AUC, run on Ray workers. Writes runs/<date>-<time>-benchmark-<name>/ with "
        "results.jsonl (the journal), results.parquet/.csv, table.md (also printed) and, for several OE sizes, "
        "oe_size.png. Without --config it runs the embedded default (digits, five methods, full patch corpus as OE).",
    )
    p.add_argument("--config", help="experiment YAML (see search_configs/); default: the embedded experiment")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set benchmark.seeds=5 (repeatable)")
    p.add_argument("--out", help="parent folder for the benchmark directory (run.out)")
    p.add_argument("--resume", metavar="BENCH_DIR", help="continue a killed benchmark: run only the cells its "
                   "journal lacks")
    p.add_argument("--address", help="Ray cluster address, e.g. 'auto' on a head node (run.address)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from oesearch.benchmark.runner import BenchDir, prepare_benchmark, run_benchmark

    try:
        if args.resume:
            if args.config or args.overrides or args.out:
                raise ConfigError("--resume continues a benchmark with its own saved config; drop --config/--set/--out")
            benchdir = BenchDir.existing(Path(args.resume))
            raw = read_yaml(benchdir.file("config.yaml"))
            if args.address:  # where the cluster is may differ after a restart; what the benchmark is may not
                raw.setdefault("run", {})["address"] = args.address
            config = config_from_dict(raw)
        else:
            raw = read_yaml(args.config) if args.config else {}
            flags = [f"run.{key}={yaml.safe_dump(value).strip().removesuffix('...').strip()}"  # a YAML string
                     for key, value in (("out", args.out), ("address", args.address)) if value]
            config, benchdir = config_from_dict(apply_overrides(raw, list(args.overrides) + flags)), None
        prepared = prepare_benchmark(config)  # bad data or values fail here, before a directory exists
        if benchdir is None:
            benchdir = BenchDir.create(Path(config.run.out).expanduser(), f"benchmark-{config.name}")
        run_benchmark(config, benchdir, prepared, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(benchdir.path)
    return 0
