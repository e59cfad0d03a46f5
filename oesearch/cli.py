"""Command line: ``oesearch search|benchmark|evaluate|signal|report`` (``python oesearch/run.py`` is the same).

    python oesearch/run.py --method hsc --mode worst                    # search is the default subcommand
    oesearch search --config search_configs/cifar10_jpeg.yaml --set search.population=32
    oesearch search --resume runs/20261128-101500-embedded-hsc-worst-c8-s0
    oesearch report runs/20261128-101500-embedded-hsc-worst-c8-s0   # HTML report, also of a running search
    oesearch benchmark --config search_configs/cifar10_split.yaml      # classes x methods x OE sizes x seeds
    oesearch evaluate --indices 3 17 --seeds 4                          # how good is each OE image for the class?
    oesearch signal --images 48 --seeds 4                               # how much of a fitness is the image?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from oesearch.config import ConfigError, apply_overrides, config_from_dict, read_yaml
from oesearch.methods import NAMES
from oesearch.supervisor import supervise, supervised, tell_supervisor

__all__ = ["COMMANDS", "build_parser", "resolve_config", "main", "evaluate_main", "signal_main", "report_main"]

COMMANDS = ("search", "campaign", "benchmark", "evaluate", "signal", "report")
_SUPERVISED_COMMANDS = ("search", "campaign", "evaluate", "signal")  # run in a child process whose death is explained


def _expected() -> tuple[type[BaseException], ...]:
    """The errors a command explains in one line and exits 2 on (looked up when one happens: Ray loads late)."""
    from oesearch.data import DataError
    from oesearch.distributed.cluster import ClusterLost
    from oesearch.results.rundir import RunBusy

    return ConfigError, DataError, FileNotFoundError, ClusterLost, RunBusy


class _Parser(argparse.ArgumentParser):
    """``oesearch ARGS`` with no subcommand is ``oesearch search ARGS`` (and ``python oesearch/run.py ARGS``)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help")):
            args = ["search", *args]
        return super().parse_known_args(args, namespace)


def _run_parser() -> argparse.ArgumentParser:
    """The arguments every run command shares: what to run (--config, --set, --seed) and where (--out...)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", help="experiment YAML (see search_configs/); default: the embedded experiment")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.population=32 (repeatable; docs/configuration.md "
                   "lists every key)")
    p.add_argument("--seed", type=int, help="run seed (run.seed); every random number descends from it")
    p.add_argument("--out", help="parent folder for run directories (run.out)")
    p.add_argument("--address", metavar="local|auto|HOST:PORT",
                   help="which Ray to run on (run.address): 'local' starts a private instance that ends with the run; "
                   "'auto' or HOST:PORT joins that cluster. Without it: RAY_ADDRESS if set, else the cluster that "
                   "`ray start` recorded on this machine (a head node, as with `ray submit`), else a private "
                   "instance. The first line after the data says which it joined")
    p.add_argument("--storage", help="shared storage for the run directory: a path, or a URI such as s3://bucket/runs "
                   "(run.storage)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The one parser: a subcommand each, all run commands sharing :func:`_run_parser`'s arguments."""
    p = _Parser(
        prog="oesearch",
        description="Evolutionary search for the single OE images that make an anomaly detector best or worst "
        "(Liznerski et al., Exposing Outlier Exposure, TMLR 2022). Without --config every command runs the "
        "embedded default: sklearn digits as normal data, patches of sklearn's sample photos as the OE corpus. "
        "Without a subcommand, `oesearch ARGS` is `oesearch search ARGS`.",
        epilog="`oesearch COMMAND --help` describes each command.",
    )
    sub = p.add_subparsers(dest="command", title="commands", parser_class=argparse.ArgumentParser, metavar="{" + ",".join(COMMANDS) + "}")
    run = _run_parser()

    search = sub.add_parser("search", parents=[run], help="search for the best or worst OE images (the default)",
                            description="Run the evolutionary search (or a baseline strategy), validate its finalists "
                            "on fresh seeds against random images, and write the run directory; the last line "
                            "printed is its path.")
    search.add_argument("--method", choices=list(NAMES),
                        help="objective (train.method); the CLIP methods need train.clip.weights")
    search.add_argument("--mode", choices=["best", "worst"],
                        help="search for the best or the worst OE samples (search.mode)")
    search.add_argument("--strategy", choices=["evolution", "random", "aging"],
                        help="evolution (the paper's), the random-search baseline, or aging (regularized evolution)")
    search.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its journal and checkpoint")
    search.set_defaults(handler=_search)

    camp = sub.add_parser("campaign", parents=[run], help="a grid of searches on one worker pool (a whole Table 3)",
                          description="Run every search of the config's `campaign` grid (normal classes x methods x "
                          "modes, x strategies and seeds; by default the whole Table 3 grid: every class, HSC and "
                          "BCE, best and worst) from one driver on one pool of workers, whose trainings interleave "
                          "so that no search's generation barrier idles the pool. Each search writes the run "
                          "directory `oesearch search` would, under CAMPAIGN_DIR/searches/; the campaign directory "
                          "adds manifest.json, status.json, the combined table (table.md, table.csv), "
                          "results.parquet and report.html. The last line printed is its path.")
    camp.add_argument("--resume", metavar="CAMPAIGN_DIR",
                      help="continue a killed campaign: finished searches are skipped, the others resume")
    camp.set_defaults(handler=_campaign, method=None, mode=None, strategy=None)

    bench = sub.add_parser("benchmark", parents=[run], help="a benchmark table: classes x methods x OE sizes x seeds",
                           description="Run a benchmark: every class x method x OE size x seed of the config's "
                           "`benchmark` section is one training and test AUC, run on Ray workers. Writes "
                           "runs/<date>-<time>-benchmark-<name>/ with results.jsonl (the journal), "
                           "results.parquet/.csv, table.md (also printed) and, for several OE sizes, oe_size.png. "
                           "Without --config it runs the embedded default (digits, five methods, full patch corpus "
                           "as OE).")
    bench.add_argument("--resume", metavar="BENCH_DIR",
                       help="continue a killed benchmark: run only the cells its journal lacks")
    bench.set_defaults(handler=_benchmark, method=None, mode=None, strategy=None)

    ev = sub.add_parser("evaluate", parents=[run], help="score given OE images over N seeds",
                        description="Train and score each given OE image (alone, as the only outlier exposure) over "
                        "N seeds for the config's normal class, through the search's workers and journal. Prints a "
                        'table, then one JSON line: {"method", "normal_class", "seeds", "results": [{"index", '
                        '"auc_mean", "auc_sd", "aucs"}, ...]} (auc_sd: the sample SD over seeds). The run '
                        "directory holds the journal and evaluation.json.")
    what = ev.add_mutually_exclusive_group()
    what.add_argument("--indices", type=int, nargs="+", metavar="I", help="corpus indices (data.corpus)")
    what.add_argument("--images", nargs="+", metavar="FILE",
                      help="image files, resized and converted to the normal data's shape as the corpus is")
    ev.add_argument("--seeds", type=int, default=3, help="training seeds per image, derived from run.seed (default 3)")
    ev.add_argument("--method", choices=list(NAMES), help="objective (train.method)")
    ev.add_argument("--resume", metavar="RUN_DIR", help="continue a killed evaluation from its journal")
    ev.set_defaults(handler=_evaluate, mode=None, strategy=None)

    sig = sub.add_parser("signal", parents=[run], help="how much of a fitness is the image, not the seed",
                         description="Measure, without searching, how much of a training's test AUC the OE image "
                         "explains for this config: N random corpus images (the search's own generation-0 draw) x S "
                         "of the search's seeds, one training each, then a one-way random-effects ANOVA. Prints the "
                         "image and seed SDs, the ICC and the reliability of a search.repetitions-seed fitness, then "
                         'one JSON line: {"method", "normal_class", "repetitions", "icc", "seed_sd", "image_sd", '
                         '"reliability", "images", "seeds", ...}. Calibrate a schedule with it before spending a '
                         "search budget.")
    sig.add_argument("--images", type=int, default=48, help="random corpus images (default 48)")
    sig.add_argument("--seeds", type=int, default=4, help="training seeds per image (default 4)")
    sig.add_argument("--method", choices=list(NAMES), help="objective (train.method)")
    sig.add_argument("--resume", metavar="RUN_DIR", help="continue a killed measurement from its journal")
    sig.set_defaults(handler=_signal, mode=None, strategy=None)

    rep = sub.add_parser("report", help="an HTML report of finished or running searches",
                         description="Write one self-contained HTML report (figures embedded as PNG) for one or more "
                         "run directories; works on runs still in progress.")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", help="output file (default: RUN_DIR/report.html for one run, ./oesearch-report.html "
                     "for several)")
    rep.set_defaults(handler=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if argv is None and args.command in _SUPERVISED_COMMANDS and not supervised():
        return supervise(sys.argv[1:])  # from the command line: the run has a driver process of its own
    return args.handler(args)


def _report(args: argparse.Namespace) -> int:
    from oesearch.analysis.html_report import write_report_command

    return write_report_command(args.run_dirs, args.out)


def _benchmark(args: argparse.Namespace) -> int:
    from oesearch.experiments.benchmark import BenchDir, prepare_benchmark, run_benchmark

    benchdir = None
    try:
        if args.resume:
            if args.config or args.overrides or args.out or args.seed is not None:
                raise ConfigError("--resume continues a benchmark with its own saved config; "
                                  "drop --config/--set/--out/--seed")
            benchdir = BenchDir.existing(Path(args.resume))
            config = _resumed_config(benchdir, args)
        else:
            config, benchdir = resolve_config(args), None
        prepared = prepare_benchmark(config)  # bad data or values fail here, before a directory exists
        if benchdir is None:
            benchdir = new_rundir(config, f"benchmark-{config.name}", BenchDir)
        run_benchmark(config, benchdir, prepared, progress=not args.no_progress)
    except _expected() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failed mid-run: disk full, file system gone read-only...
        print(f"error: {_write_failed(err, benchdir, 'python oesearch/run.py benchmark')}", file=sys.stderr)
        return 2
    print(benchdir.path)
    return 0


def _resumed_config(rundir, args: argparse.Namespace):
    """A run directory's own config; only where the cluster and the storage are may change on resume."""
    raw = read_yaml(rundir.file("config.yaml"))
    for key, value in (("address", args.address), ("storage", args.storage)):
        if value:  # where the cluster is may differ after a restart; what the run is may not
            raw.setdefault("run", {})[key] = value
    return config_from_dict(raw)


def _measure(args: argparse.Namespace, command: str, kept: list[str], from_request, fresh, run):
    """The frame ``evaluate`` and ``signal`` share: start (or ``--resume``) a run directory, run, report failures.

    ``from_request(config, request)`` rebuilds what to train from a resumed directory's request file;
    ``fresh(config)`` checks and loads it for a new run before any file exists; ``run(config, rundir, what)``
    trains it. Returns ``(rundir, result)``, or ``(None, 2)`` after printing the error.
    """
    from oesearch.experiments.evaluate import REQUEST
    from oesearch.results import RunDir

    rundir = None
    try:
        if args.resume:
            rundir = RunDir.existing(Path(args.resume))
            if any(getattr(args, name) is not None and getattr(args, name) != [] for name in kept):
                flags = "/".join(f"--{name.replace('overrides', 'set')}" for name in kept)
                noun = {"evaluate": "an evaluation", "signal": "a measurement"}.get(command, f"a {command}")
                raise ConfigError(f"--resume continues {noun} with its own saved config; drop {flags}")
            config = _resumed_config(rundir, args)
            what = from_request(config, yaml.safe_load(rundir.file(REQUEST).read_text()))
        else:
            config = resolve_config(args)
            what = fresh(config)  # before any file
            rundir = new_rundir(config, f"{config.name}-{config.train.method}-{command}-c{config.data.normal_class}"
                                        f"-s{config.run.seed}")
        return rundir, run(config, rundir, what)
    except _expected() as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:  # a write failed mid-run: disk full, file system gone read-only...
        print(f"error: {_write_failed(err, rundir, f'python oesearch/run.py {command}')}", file=sys.stderr)
    return None, 2


def signal_main(argv: list[str]) -> int:
    """``oesearch signal ARGS`` in this process."""
    return _signal(build_parser().parse_args(["signal", *argv]))


def _signal(args: argparse.Namespace) -> int:
    """``oesearch signal``: the variance components, then one JSON line last."""
    from oesearch.experiments.search import report_signal
    from oesearch.experiments.signal import prepare_signal, run_signal, signal_line

    rundir, result = _measure(
        args, "signal", ["config", "overrides", "method", "seed"],
        lambda config, request: prepare_signal(config, len(request["indices"]), request["seeds"]),
        lambda config: prepare_signal(config, args.images, args.seeds),
        lambda config, rundir, what: run_signal(config, rundir, what, progress=not args.no_progress))
    if rundir is None:
        return result
    signal, line = result
    print(rundir.path)
    report_signal(signal, print, source="")
    print(signal_line(line))
    return 0


def report_main(argv: list[str]) -> int:
    """``oesearch report ARGS`` in this process."""
    return _report(build_parser().parse_args(["report", *argv]))


def evaluate_main(argv: list[str]) -> int:
    """``oesearch evaluate ARGS`` in this process."""
    return _evaluate(build_parser().parse_args(["evaluate", *argv]))


def _evaluate(args: argparse.Namespace) -> int:
    """``oesearch evaluate``: a table, then one JSON line last."""
    from oesearch.experiments.evaluate import format_table, prepare_evaluation, results_line, run_evaluation

    def fresh(config):
        if not args.indices and not args.images:
            raise ConfigError("name the OE images to evaluate: --indices I [I ...] or --images FILE [FILE ...]")
        return prepare_evaluation(config, args.indices, args.images, args.seeds)

    rundir, summary = _measure(
        args, "evaluate", ["config", "overrides", "method", "seed", "indices", "images"],
        lambda config, request: prepare_evaluation(config, request["indices"], request["images"], request["seeds"]),
        fresh,
        lambda config, rundir, what: run_evaluation(config, rundir, what, progress=not args.no_progress))
    if rundir is None:
        return summary
    print(rundir.path)
    print(format_table(summary))
    print(results_line(summary))
    return 0


def resolve_config(args: argparse.Namespace):
    """Config file, then --set overrides, then the dedicated flags (which win)."""
    raw = read_yaml(args.config) if args.config else {}
    flags = {
        "train.method": args.method,
        "search.mode": args.mode,
        "search.strategy": args.strategy,
        "run.seed": args.seed,
        "run.out": args.out,
        "run.address": args.address,
        "run.storage": args.storage,
    }
    overrides = list(args.overrides) + [f"{k}={yaml.safe_dump(v).strip().removesuffix('...').strip()}"
                                         for k, v in flags.items() if v is not None]
    return config_from_dict(apply_overrides(raw, overrides))


def _search(args: argparse.Namespace) -> int:
    """``oesearch search``: the search, its validation and its outputs; the run directory is the last line."""
    from oesearch.analysis.html_report import write_report
    from oesearch.distributed.cluster import ClusterLost, connect
    from oesearch.experiments.search import prepare, run_search
    from oesearch.results import RunDir

    rundir = None
    try:
        if args.resume:
            rundir = RunDir.existing(Path(args.resume))
            if args.config or args.overrides or args.method or args.mode or args.strategy or args.seed is not None:
                raise ConfigError("--resume continues a run with its own saved config; drop --config/--set/--method/--mode/--strategy/--seed")
            config = _resumed_config(rundir, args)
        else:
            config, rundir = resolve_config(args), None
        data = prepare(config)  # bad data or values fail here, before a run directory exists
        fresh = rundir is None
        if fresh:
            label = f"{config.name}-{config.train.method}-{config.search.mode}-c{config.data.normal_class}-s{config.run.seed}"
            if config.search.strategy == "random":
                label += "-random"
            rundir = new_rundir(config, label)
        try:
            cluster = connect(config.run.address, print)  # the line says which Ray it runs on
        except ClusterLost:
            if fresh:
                rundir.path.rmdir()  # still empty: a run that never started leaves nothing behind
            raise
        tell_supervisor(rundir, cluster)
        run_search(config, rundir, data=data, progress=not args.no_progress,
                   report=lambda path: write_report([path]))
    except _expected() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failed mid-run: disk full, file system gone read-only...
        print(f"error: {_write_failed(err, rundir)}", file=sys.stderr)
        return 2
    print(rundir.path)
    return 0


def _campaign(args: argparse.Namespace) -> int:
    """``oesearch campaign``: every search of the grid on one pool, then the combined table and report."""
    from oesearch.analysis.campaign import write_campaign_outputs
    from oesearch.analysis.html_report import write_report
    from oesearch.distributed.cluster import connect
    from oesearch.experiments.campaign import CAMPAIGN_COMMAND, check_manifest, prepare_campaign, run_campaign
    from oesearch.results import RunDir

    campaign = None
    try:
        if args.resume:
            campaign = RunDir.existing(Path(args.resume))
            if args.config or args.overrides or args.seed is not None:
                raise ConfigError("--resume continues a campaign with its own saved config; drop --config/--set/--seed")
            config = _resumed_config(campaign, args)
        else:
            config = resolve_config(args)
        plan = prepare_campaign(config)  # bad data or values fail here, before a directory exists
        if campaign is None:
            campaign = new_rundir(config, f"campaign-{config.name}")
        else:
            check_manifest(campaign.path, plan.cells)
        tell_supervisor(campaign, connect(config.run.address, print), CAMPAIGN_COMMAND)
        states = run_campaign(config, campaign, plan, report=lambda path: write_report([path]),
                              outputs=write_campaign_outputs)
    except _expected() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failed mid-run: disk full, file system gone read-only...
        print(f"error: {_write_failed(err, campaign, CAMPAIGN_COMMAND)}", file=sys.stderr)
        return 2
    failed = [name for name, state in states.items() if state != "finished"]
    if failed:
        print(f"error: {len(failed)} of {len(states)} searches did not finish ({', '.join(failed)}); "
              f"{campaign.file('status.json')} says why. Fix the cause, then: {CAMPAIGN_COMMAND} --resume "
              f"{campaign.path}", file=sys.stderr)
        print(campaign.path)
        return 1
    print(campaign.path)
    return 0


def new_rundir(config, label: str, kind=None):
    """A fresh run directory (a ``kind``, :class:`RunDir` by default) under ``run.out`` (or ``run.storage``);
    an unwritable parent is a clear error."""
    from oesearch.results import RunDir
    from oesearch.results.storage import run_parent

    parent = run_parent(config.run.out, config.run.storage)
    try:
        return (kind or RunDir).create(parent, label)
    except OSError as err:
        raise ConfigError(f"cannot create a run directory under {parent}: {err.strerror or err}. "
                          "Give a folder you can write to with --out DIR (or --storage).") from None


def _write_failed(err: OSError, rundir, command: str = "python oesearch/run.py") -> str:
    """One paragraph: which write failed, what is safe, and the command that continues."""
    import errno

    what = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "a write failed"
    where = f" writing {err.filename}" if err.filename else ""
    if rundir is None or not rundir.path.exists():
        return f"{what}{where} ({err.strerror or err}); nothing was written. Free space or fix the folder, then run again."
    rows = rundir.journal_rows()
    return (f"{what}{where} ({err.strerror or err}). Nothing already written is lost: {len(rows)} finished "
            f"evaluations are in {rundir.file(rundir.journal_name)}. Free space (or make {rundir.path.parent} "
            f"writable), then continue with: {command} --resume {rundir.path}")


if __name__ == "__main__":
    sys.exit(main())
