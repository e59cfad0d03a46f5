"""Search overhead: the fraction of a generation's wall time spent outside training.

    python benchmarks/overhead.py [--quick]

A real search (``run_search``: evolution, FAISS neighbour draws, Ray dispatch,
journal, checkpoints) on a CIFAR-sized configuration: normal class airplane
of the CIFAR-10 JPEGs (32x32x3, the paper's LeNet, HSC, batches of 128 + 128,
lr 1e-3), the CIFAR test images as the OE corpus, a reduced number of epochs
and a short class (so trainings last seconds, which makes the overhead look
*larger* than at the paper's 30 epochs).  One fitness worker, so no
generation-barrier idling is mixed in: per generation g >= 1,

    overhead_g = 1 - (training seconds the worker reports for g) / (wall time of g),

where the wall time of g runs from the end of generation g-1 to the end of g
(selection, mutation and mating with neighbour draws, dispatch, journal
writes, the checkpoint).  Generation 0 also holds the worker's start-up and is
reported apart.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cifar import cifar_tree  # noqa: E402

from oesearch.config import config_from_dict  # noqa: E402
from oesearch.results import RunDir  # noqa: E402
from oesearch.experiments.search import prepare, run_search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter class and search (under 2 minutes)")
    args = parser.parse_args()
    n_train, n_test, population, generations = (640, 50, 6, 2) if args.quick else (2000, 200, 8, 4)
    root = cifar_tree(n_train, n_test)
    if root is None:
        sys.exit(f"needs the CIFAR-10 JPEG archive ({Path('../shared/data/cifar10-jpeg.tar.gz')}); not found")
    with tempfile.TemporaryDirectory(prefix="oesearch-bench-overhead-") as tmp:
        config = config_from_dict({
            "name": "overhead",
            "data": {"normal": {"kind": "imagefolder", "path": str(root)},
                     "corpus": {"kind": "imagefolder", "path": str(root / "test")},
                     "normal_class": 0, "cache_dir": str(Path(tmp) / "cache")},
            "train": {"method": "hsc", "epochs": 1, "lr": 1e-3, "milestones": [1], "batch_size": 128},
            "search": {"population": population, "generations": generations, "pool": 10 * n_test - 100,
                       "k_nearest": 20, "repetitions": 1, "hall_of_fame": 1,
                       "validation": {"scheme": "fixed", "seeds": 1, "random_panel": 0}},
            "run": {"workers": 1, "seed": 0, "address": "local", "out": tmp},
        })
        data = prepare(config, log=print)
        ends: dict[int, float] = {}
        start = time.perf_counter()

        def log(line: str) -> None:
            if line.startswith("gen "):
                ends[int(line.split()[1].split("/")[0])] = time.perf_counter()
            print(line, flush=True)

        rundir = RunDir.create(Path(tmp) / "runs", "overhead")
        run_search(config, rundir, data=data, log=log, progress=False)
        rows = [r for r in rundir.journal_rows() if r["purpose"] == "search"]

    print(f"\n{n_train} normal training images ({-(-n_train // 128)} steps of 128+128 per training), corpus of "
          f"{len(data.corpus)}, population {population}, 1 worker\n")
    print("| generation | trainings | training (s) | wall (s) | outside training |")
    print("|---:|---:|---:|---:|---:|")
    figures: dict[str, float] = {}
    train_sum = wall_sum = 0.0
    for g in sorted(ends):
        trained = [r["seconds"] for r in rows if r["generation"] == g]
        wall = ends[g] - (ends[g - 1] if g > 0 else start)
        frac = 1 - sum(trained) / wall
        print(f"| {g}{' (with start-up)' if g == 0 else ''} | {len(trained)} | {sum(trained):.2f} | {wall:.2f} | {100 * frac:.2f}% |")
        if g > 0:
            train_sum, wall_sum = train_sum + sum(trained), wall_sum + wall
        else:
            figures["overhead_gen0_with_startup"] = round(frac, 4)
    figures["overhead_fraction"] = round(1 - train_sum / wall_sum, 4)
    figures["mean_training_s"] = round(train_sum / max(1, sum(1 for r in rows if r["generation"] > 0)), 2)
    print(f"\ngenerations 1-{max(ends)}: {100 * figures['overhead_fraction']:.2f}% of the wall time outside training")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
