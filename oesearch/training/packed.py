"""Packed training: K candidates (individual x seed) train as one program.

K LeNets become one network: convolutions are grouped convolutions over K*C
channels, BatchNorm runs over K*c channels (channel j of candidate k has its
own batch statistics, and its own scale and shift when affine, exactly as in
its own network), and the linear layers are batched matmuls over a leading K
axis, with a (K, out) bias when the networks have biases.  The loss is
the *sum* over candidates of each candidate's mean loss, so each candidate's
gradient is the one its own training would see; Adam and weight decay are
elementwise, so the stacked parameters carry K independent optimiser states.

Each candidate starts from the weights :func:`seeded_model` gives its seed and
draws its batches with :func:`balanced_batches` from its own generator: a
packed candidate replays its unpacked training (up to float rounding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oesearch.models.lenet import _LEAK, LeNet
from oesearch.training.execution import forward_mode, matmul_mode, place_input, place_model
from oesearch.training.auc import roc_auc
from oesearch.training.objectives import packable
from oesearch.training.trainer import PreparedTask, balanced_batches, seeded_model, setup_for
from oesearch.training.types import Objective, TrainSettings

__all__ = ["PackedLeNet", "PackedResult", "train_packed", "auto_pack", "CANDIDATE_BYTES"]

# Rough device bytes one CIFAR-sized candidate needs while training at batch 128+128 (activations,
# gradients, Adam state); used only to size K from free memory on CUDA.
CANDIDATE_BYTES = 160 * 2**20


def _stacked(tensors: Sequence[torch.Tensor | None], cat: bool = False) -> nn.Parameter | None:
    """One parameter holding the K networks' tensors (None when they have none, e.g. no bias)."""
    if tensors[0] is None:
        return None
    joined = torch.cat if cat else torch.stack
    return nn.Parameter(joined([t.detach() for t in tensors]).clone())


def _packed_batchnorm(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> nn.modules.batchnorm._BatchNorm:
    """The K networks' BatchNorms of one layer as one over K*c channels, their scales and shifts copied."""
    first = bns[0]
    packed = type(first)(len(bns) * first.num_features, eps=first.eps, affine=first.affine)
    if first.affine:
        with torch.no_grad():
            packed.weight.copy_(torch.cat([bn.weight for bn in bns]))
            packed.bias.copy_(torch.cat([bn.bias for bn in bns]))
    return packed


class PackedLeNet(nn.Module):
    """K LeNets of one spec as one module: (B, K*C, H, W) -> (B, K, F), or (B, K) with a head."""

    def __init__(self, nets: Sequence[LeNet]) -> None:
        super().__init__()
        self.k = len(nets)
        first = nets[0]
        convs = [[m for m in n.conv if isinstance(m, nn.Conv2d)] for n in nets]
        bns = [[m for m in n.conv if isinstance(m, nn.BatchNorm2d)] for n in nets]
        layers = range(len(convs[0]))
        self.conv_weights = nn.ParameterList(_stacked([c[i].weight for c in convs], cat=True) for i in layers)
        self.conv_biases = (nn.ParameterList(_stacked([c[i].bias for c in convs], cat=True) for i in layers)
                            if convs[0][0].bias is not None else None)
        self.padding = convs[0][0].padding
        self.bns = nn.ModuleList(_packed_batchnorm([b[i] for b in bns]) for i in layers)
        lin1 = [n.fc[1] for n in nets]
        lin2 = [n.fc[4] for n in nets]
        self.w1 = _stacked([m.weight for m in lin1])  # (K, hidden, in)
        self.b1 = _stacked([m.bias for m in lin1])  # (K, hidden) or None
        self.bn1 = _packed_batchnorm([n.fc[2] for n in nets])
        self.w2 = _stacked([m.weight for m in lin2])  # (K, features, hidden)
        self.b2 = _stacked([m.bias for m in lin2])  # (K, features) or None
        if first.head is not None:
            self.head_w = nn.Parameter(torch.stack([n.head.weight.detach()[0] for n in nets]).clone())  # (K, F)
            self.head_b = nn.Parameter(torch.cat([n.head.bias.detach() for n in nets]).clone())  # (K,)
        else:
            self.head_w = self.head_b = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        biases = self.conv_biases if self.conv_biases is not None else [None] * len(self.bns)
        for weight, bias, bn in zip(self.conv_weights, biases, self.bns):
            x = F.conv2d(x, weight, bias, padding=self.padding, groups=self.k)
            x = F.max_pool2d(F.leaky_relu(bn(x), _LEAK), 2)
        b = x.shape[0]
        x = torch.einsum("bki,khi->bkh", x.reshape(b, self.k, -1), self.w1)
        if self.b1 is not None:
            x = x + self.b1
        x = F.leaky_relu(self.bn1(x.reshape(b, -1)), _LEAK).reshape(b, self.k, -1)
        z = torch.einsum("bkh,kfh->bkf", x, self.w2)
        if self.b2 is not None:
            z = z + self.b2
        if self.head_w is None:
            return z
        return torch.einsum("bkf,kf->bk", z, self.head_w) + self.head_b


@dataclass
class PackedResult:
    """Per candidate: AUC (None when it diverged), why it failed, losses."""

    aucs: list[float | None]
    failures: list[str | None]
    epoch_losses: list[list[float]] = field(default_factory=list)
    step_losses: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0


def auto_pack(device: torch.device, requested: int | None = None, per_candidate: int = CANDIDATE_BYTES) -> int:
    """K: ``requested`` if given; on CUDA what free memory holds (90%); on CPU 1.

    On CPU, training is compute-bound and packing saves no arithmetic:
    ``benchmarks/throughput.py`` measured K = 2..8 at 0.6-0.9x the evaluations
    per hour of K = 1 on the project's 2-core VM (once 1.1-1.6x, while another
    job loaded the cores).  K = 1 also keeps a search bit-reproducible (with
    K > 1 a training's rounding depends on which candidates share its call).
    """
    if requested:
        return requested
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(0.9 * free // per_candidate))
    return 1


def _per_candidate_loss(objective: Objective, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
    """(K,) mean losses from packed outputs (B, K, ...)."""
    k = out.shape[1]
    flat = out.transpose(0, 1).reshape(k * out.shape[0], *out.shape[2:])
    return objective.loss(flat, is_outlier.repeat(k)).view(k, -1).mean(1)


def train_packed(
    task: PreparedTask,
    oe_images: Sequence[np.ndarray],
    objective: Objective,
    settings: TrainSettings,
    seeds: Sequence[int],
    record_steps: int = 0,
) -> PackedResult:
    """Train K = len(seeds) candidates at once; candidate k uses ``oe_images[k]`` and ``seeds[k]``.

    A candidate whose loss turns non-finite is reported failed; since its
    parameters are disjoint from the others', the rest train on unaffected
    (its NaN loss is masked out of the summed loss, so no NaN gradient spreads).
    """
    start = time.perf_counter()
    if not packable(objective):
        raise ValueError(f"the packed trainer does not support {objective.name!r} (a centre-based objective); "
                         "train it with train_and_evaluate (run.pack 1)")
    if len(oe_images) != len(seeds) or not seeds:
        raise ValueError(f"{len(oe_images)} OE sets for {len(seeds)} seeds")
    with matmul_mode(settings.precision, task.device):
        result = _train_packed(task, oe_images, objective, settings, seeds, record_steps)
    result.seconds = time.perf_counter() - start
    return result


def _train_packed(task: PreparedTask, oe_images: Sequence[np.ndarray], objective: Objective, settings: TrainSettings,
                  seeds: Sequence[int], record_steps: int) -> PackedResult:
    device = task.device
    k = len(seeds)
    setup = setup_for(objective, settings)
    nets = [seeded_model(task.image_shape, objective.head, s, device, task.dtype, setup) for s in seeds]
    if not isinstance(nets[0], LeNet):
        raise ValueError(f"the packed trainer packs LeNets only, not {type(nets[0]).__name__}; use run.pack 1")
    packed = PackedLeNet(nets).to(device, task.dtype)
    model = place_model(packed, settings.channels_last, settings.compile)
    forward = forward_mode(settings.precision, device)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    oes = [task.normalise(images) for images in oe_images]
    augment = task.augmenter(settings.augment)
    optimiser = torch.optim.Adam(packed.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(settings.milestones), gamma=0.1)
    steps = math.ceil(task.train.shape[0] / settings.batch_size)
    alive = torch.ones(k, dtype=torch.bool, device=device)
    epoch_totals: list[torch.Tensor] = []
    recorded: list[torch.Tensor] = []
    model.train()
    for _ in range(settings.epochs):
        total = torch.zeros(k, device=device, dtype=task.dtype)
        streams = [balanced_batches(task.train, oe, settings.batch_size, g, augment, task.prepare)
                   for oe, g in zip(oes, gens)]
        for batches in zip(*streams):
            b = batches[0].shape[0] // 2
            # (2b, K, C, H, W) -> (2b, K*C, H, W): candidate k owns channel block k.
            x = place_input(torch.stack(batches, dim=1).flatten(1, 2), settings.channels_last)
            is_outlier = torch.arange(2 * b, device=device) >= b
            with forward:
                out = model(x)
            losses = _per_candidate_loss(objective, out.to(task.dtype), is_outlier)
            alive &= torch.isfinite(losses)
            optimiser.zero_grad(set_to_none=True)
            torch.where(alive, losses, 0.0).sum().backward()
            optimiser.step()
            total += losses.detach()
            if len(recorded) < record_steps:
                recorded.append(losses.detach())
        schedule.step()
        epoch_totals.append(total / steps)

    epoch_losses = torch.stack(epoch_totals).T.tolist()  # one host sync for the whole training
    ok = alive.tolist()
    with forward:
        scores = _packed_scores(model, packed.k, objective, task.test,
                                lambda px: place_input(task.prepare(px), settings.channels_last))
    aucs: list[float | None] = []
    failures: list[str | None] = []
    for i in range(k):
        bad = next((e for e, v in enumerate(epoch_losses[i]) if not math.isfinite(v)), None)
        if not ok[i] or bad is not None:
            aucs.append(None)
            failures.append(f"loss became non-finite in epoch {(bad or 0) + 1}/{settings.epochs}")
        elif not np.all(np.isfinite(scores[i])):
            aucs.append(None)
            failures.append("the trained model produced non-finite anomaly scores")
        else:
            aucs.append(roc_auc(task.test_anomalous, scores[i]))
            failures.append(None)
    steps_out = torch.stack(recorded).T.tolist() if recorded else [[] for _ in range(k)]
    return PackedResult(aucs, failures, epoch_losses, steps_out)


@torch.no_grad()
def _packed_scores(model: torch.nn.Module, k: int, objective: Objective, images: torch.Tensor, load,
                   chunk: int = 1024) -> np.ndarray:
    """(K, m) anomaly scores in eval mode; every candidate sees the same test images (``load`` makes them input)."""
    model.eval()
    parts = []
    for i in range(0, len(images), chunk):
        x = load(images[i : i + chunk])
        out = model(x.repeat(1, k, 1, 1)).to(x.dtype)  # (b, K, ...); full precision for scoring
        flat = out.transpose(0, 1).reshape(k * out.shape[0], *out.shape[2:])
        parts.append(objective.score(flat).view(k, -1))
    return torch.cat(parts, dim=1).float().cpu().numpy()
