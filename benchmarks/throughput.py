"""Fitness-evaluation throughput: plain PIL/DataLoader trainer vs device-resident vs de-duplicated vs packed K.

    python benchmarks/throughput.py [--device cpu|cuda] [--quick] [--packs 2 4 8] [--precision bf16]
                                    [--channels-last] [--compile]

One evaluation = train a CIFAR-sized LeNet (32x32x3, the paper's CNN) with HSC
from scratch on one normal class plus one OE image, batches of 128 normal + 128
OE, then score the test set (ROC AUC).  Reduced epochs; same settings for all:

- plain: the way most research code does it -- PIL images through torchvision
  transforms (ToTensor, Normalize) in a per-sample DataLoader (num_workers=0 on
  CPU; on CUDA, as the reference code does there, 4 worker processes with pinned
  memory and ``.cuda()`` per batch), the OE image transformed B times per step,
  one model at a time, ``loss.item()`` every step;
- resident: this project's trainer (``train_and_evaluate``), K = 1, on the duplicated
  batch (``dedup`` off: the trainer as it was before de-duplication);
- dedup: the resident trainer with OE de-duplication (``train.dedup``, the default):
  the one OE image computed once per step, weighted B in BatchNorm and the loss;
- packed K: ``train_packed`` trains K candidates (different OE image and seed) at once,
  without de-duplication; packed+dedup K: the same with it;
- resident <switches>: with ``--precision``/``--channels-last``/``--compile``, the
  resident trainer again with those ``train`` switches (also in the interleaved
  rounds; with ``--compile`` one untimed warm-up call compiles first).

``--device`` picks where everything trains (default: CUDA when available, else
the CPU).  Evaluations per hour = K x 3600 / wall seconds of one call.  Variants run in
interleaved rounds and the best round counts, since the cores may be shared.
The last line is one JSON object of the figures and ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cifar import cifar_tree, describe, load_class  # noqa: E402

from oesearch.models import build_model  # noqa: E402
from oesearch.training import PreparedTask, TrainSettings, make_objective, roc_auc, train_and_evaluate  # noqa: E402
from oesearch.training.packed import train_packed  # noqa: E402


class PilImages(Dataset):
    def __init__(self, images: np.ndarray, transform) -> None:
        self.images = [Image.fromarray(x) for x in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def plain_train(train: np.ndarray, test: np.ndarray, anomalous: np.ndarray, oe: np.ndarray,
                settings: TrainSettings, seed: int, device: torch.device = torch.device("cpu")) -> float:
    """The baseline: per-sample PIL transforms, a DataLoader, a host sync every step (``.cuda()`` per batch on GPU)."""
    torch.manual_seed(seed)
    x = train.astype(np.float64) / 255
    transform = T.Compose([T.ToTensor(), T.Normalize(x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2)).tolist())])
    objective = make_objective("hsc")
    model = build_model(train.shape[1:], head=False).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(settings.milestones), gamma=0.1)
    gpu = device.type == "cuda"
    loader_options = {"num_workers": 4, "pin_memory": True, "persistent_workers": False} if gpu else {"num_workers": 0}
    loader = DataLoader(PilImages(train, transform), batch_size=settings.batch_size, shuffle=True, **loader_options)
    oe_image = Image.fromarray(oe[0])
    losses = []
    model.train()
    for _ in range(settings.epochs):
        for normal in loader:
            b = len(normal)
            outliers = torch.stack([transform(oe_image) for _ in range(b)])
            batch = torch.cat([normal, outliers]).to(device)
            loss = objective.loss(model(batch), torch.arange(2 * b, device=device) >= b).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([objective.score(model(b.to(device))).cpu()
                            for b in DataLoader(PilImages(test, transform), batch_size=256, **loader_options)])
    return roc_auc(anomalous, scores.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where every variant trains (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="a smaller class and test set (under 2 minutes)")
    parser.add_argument("--packs", type=int, nargs="*", default=None,
                        help="packed K values (default 2 4 8; none when a switch below is given)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds of plain and resident "
                        "(default 3 with --quick, else 2); the best counts")
    parser.add_argument("--precision", choices=["fp32", "bf16", "tf32"], default="fp32",
                        help="train.precision for an extra 'resident <switches>' variant")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last for that variant")
    parser.add_argument("--compile", action="store_true", help="train.compile for that variant")
    args = parser.parse_args()
    switches = [f"precision={args.precision}"] if args.precision != "fp32" else []
    switches += ["channels_last"] * args.channels_last + ["compile"] * args.compile
    switched_name = f"resident {'+'.join(switches)}" if switches else None
    if args.packs is None:  # with a switch the comparison is switched vs resident; keeps --quick short
        args.packs = [] if switches else [2, 4, 8]
    n_train, n_test = (640, 50) if args.quick else (5000, 1000)
    rounds = args.rounds or (3 if args.quick else 2)
    root = cifar_tree(n_train, n_test)
    train = load_class(root, "train", "airplane", n_train, seed=0)
    test = load_class(root, "test", None, 10 * n_test, seed=1)
    anomalous = np.ones(len(test), bool)
    if root is not None:
        anomalous[:n_test] = False  # sorted paths: airplane comes first
    else:
        anomalous[: len(test) // 10] = False
    corpus = load_class(root, "train", "ship", max(args.packs, default=1), seed=2)  # distinct OE images per candidate
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a GPU worker sets it (train.cudnn_benchmark)
    settings = TrainSettings(epochs=args.epochs, lr=1e-3, milestones=(), batch_size=128, dedup=False)
    deduped = dataclasses.replace(settings, dedup=True)
    task = PreparedTask.from_arrays(train, test, anomalous, device)
    objective = make_objective("hsc")
    steps = -(-n_train // 128) * args.epochs
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"data: {describe(root)}; {n_train} normal training images (class airplane), {len(test)} test images; "
          f"{args.epochs} epoch(s) = {steps} steps of 128+128; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {where} ({device.type})", flush=True)

    walls: dict[str, list[float]] = {"plain": [], "resident": [], "dedup": []}
    aucs: dict[str, float] = {}
    if device.type == "cuda":  # untimed warm-up: CUDA context, cuDNN's autotuning of every shape
        train_and_evaluate(task, corpus[:1], objective, settings, seed=99)
        train_and_evaluate(task, corpus[:1], objective, deduped, seed=99)
    if switched_name:
        switched = TrainSettings(epochs=args.epochs, lr=1e-3, milestones=(), batch_size=128, precision=args.precision,
                                 channels_last=args.channels_last, compile=args.compile)
        walls[switched_name] = []
        if args.compile:  # the compilation is paid once per worker process, not per evaluation
            train_and_evaluate(task, corpus[:1], objective, switched, seed=99)
    for r in range(rounds):
        start = time.perf_counter()
        aucs["plain"] = plain_train(train, test, anomalous, corpus[:1], settings, seed=r, device=device)
        walls["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        aucs["resident"] = train_and_evaluate(task, corpus[:1], objective, settings, seed=r).auc
        walls["resident"].append(time.perf_counter() - start)
        start = time.perf_counter()
        aucs["dedup"] = train_and_evaluate(task, corpus[:1], objective, deduped, seed=r).auc
        walls["dedup"].append(time.perf_counter() - start)
        if switched_name:
            start = time.perf_counter()
            aucs[switched_name] = train_and_evaluate(task, corpus[:1], objective, switched, seed=r).auc
            walls[switched_name].append(time.perf_counter() - start)
    for k in args.packs:
        for name, s in ((f"packed K={k}", settings), (f"packed+dedup K={k}", deduped)):
            oes = [corpus[i : i + 1] for i in range(k)]
            if device.type == "cuda":  # cuDNN autotunes this K's shapes once, as a worker does
                train_packed(task, oes, objective, s, list(range(k)))
            start = time.perf_counter()
            result = train_packed(task, oes, objective, s, list(range(k)))
            walls[name] = [time.perf_counter() - start]
            aucs[name] = float(np.mean(result.aucs))

    plain_rate = 3600 / min(walls["plain"])
    rows, figures = [], {}
    for name, w in walls.items():
        k = int(name.split("=")[1]) if name.startswith("packed") else 1
        rate = k * 3600 / min(w)
        rows.append((name, k, min(w), rate, rate / plain_rate, aucs[name]))
        packed_key = f"packed{k}_dedup" if name.startswith("packed+dedup") else f"packed{k}"
        names = {"plain": "plain", "resident": "resident", "dedup": "dedup", switched_name: "switched"}
        key = names.get(name, packed_key)
        figures[f"{key}_evals_per_hour"] = round(rate, 1)
        if name != "plain":
            figures[f"{key}_vs_plain"] = round(rate / plain_rate, 3)
    resident_rate = 3600 / min(walls["resident"])
    if switched_name:
        figures["switched"] = "+".join(switches)
        figures["switched_vs_resident"] = round(figures["switched_evals_per_hour"] / resident_rate, 3)
    for k in args.packs:
        figures[f"packed{k}_vs_resident"] = round(figures[f"packed{k}_evals_per_hour"] / resident_rate, 3)
        figures[f"packed{k}_dedup_vs_resident"] = round(figures[f"packed{k}_dedup_evals_per_hour"] / resident_rate, 3)
    figures["dedup_vs_resident"] = round(figures["dedup_evals_per_hour"] / resident_rate, 3)
    figures["device"] = device.type
    print("\n| variant | K | wall per call (s) | evaluations / hour | vs plain | mean AUC of its candidates |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, k, wall, rate, ratio, auc in rows:
        print(f"| {name} | {k} | {wall:.2f} | {rate:.0f} | {ratio:.2f}x | {auc:.3f} |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
