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

With de-duplication (``train.dedup``, :mod:`oesearch.training.dedup`) each
candidate's OE half holds its distinct OE rows once, padded to the largest
count among the candidates with rows of weight 0, and every BatchNorm and
loss mean weighs candidate k's rows by candidate k's multiplicities.

The test pass shares one input among the K candidates: the first grouped
convolution becomes one ordinary convolution from C to K*c channels (the same
per-candidate arithmetic, no K-fold copy of the input), and its chunks shrink
as 1/K (:func:`oesearch.training.memory.scoring_chunk`).
"""

from __future__ import annotations

import contextlib
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
from oesearch.training.dedup import oe_multiplicities, weighted_batchnorm
from oesearch.training.memory import candidate_bytes, pack_size, scoring_chunk
from oesearch.training.objectives import packable
from oesearch.training.trainer import (PreparedTask, balanced_batches, batch_generator, batch_indices, seeded_model,
                                       setup_for, uses_dedup)
from oesearch.training.types import Objective, TrainSettings

__all__ = ["PackedLeNet", "PackedResult", "train_packed", "auto_pack", "CANDIDATE_BYTES", "candidate_bytes_for"]

# Device bytes of one CIFAR-sized candidate (fp32, batch 128 + 128, no de-duplication, the test pass apart) by
# the memory model (oesearch.training.memory.candidate_bytes), for callers that size K without a task at hand.
CANDIDATE_BYTES = candidate_bytes((32, 32, 3), 256, 0).total


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

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """(B, K*C, H, W) -> outputs; ``shared``: x is (B, C, H, W), one input seen by every candidate."""
        biases = self.conv_biases if self.conv_biases is not None else [None] * len(self.bns)
        for i, (weight, bias, bn) in enumerate(zip(self.conv_weights, biases, self.bns)):
            # A shared input: the K candidates' first convolutions are one convolution from C to K*c channels.
            x = F.conv2d(x, weight, bias, padding=self.padding, groups=1 if shared and i == 0 else self.k)
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


def auto_pack(device: torch.device, requested: int | None = None, per_candidate: int = CANDIDATE_BYTES,
              jobs: int | None = None, reserve: int = 0) -> int:
    """K: ``requested`` if given; on CUDA what free memory holds by the memory model; on CPU 1.

    On CUDA, K is what 80% of the free memory, less ``reserve`` (the test pass), holds at ``per_candidate`` bytes each
    (:func:`oesearch.training.memory.candidate_bytes`), capped at
    :data:`~oesearch.training.memory.COMPUTE_CAP` (compute saturates near K = 32)
    and at ``jobs`` when given.

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
        return pack_size(max(0, free - reserve), per_candidate, jobs)
    return 1


def candidate_bytes_for(task: PreparedTask, settings: TrainSettings, head: bool, oe_rows: int = 1) -> tuple[int, int]:
    """The memory model for ``task`` under ``settings`` (``oe_rows`` OE images): (bytes per candidate, fixed bytes).

    Per candidate: its state and a training step.  Fixed: the test pass, whose chunks
    shrink as 1/K so that its activations take the same memory whatever K.
    """
    b = min(settings.batch_size, task.train.shape[0])
    rows = b + min(b, oe_rows) if settings.dedup and not settings.augment.active else 2 * b
    size = max(4, torch.tensor([], dtype=task.dtype).element_size())  # bf16 autocast keeps float32 copies too
    per = candidate_bytes(task.image_shape, rows, 0, dtype_bytes=size, head=head)
    scoring = candidate_bytes(task.image_shape, 0, min(len(task.test), scoring_chunk(1)), dtype_bytes=size, head=head)
    return per.state + per.train_step, scoring.test_pass


def _per_candidate_loss(objective: Objective, out: torch.Tensor, is_outlier: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """(K,) mean losses from packed outputs (B, K, ...); ``weights`` (B, K): the rows' multiplicities."""
    k = out.shape[1]
    flat = out.transpose(0, 1).reshape(k * out.shape[0], *out.shape[2:])
    per_row = objective.loss(flat, is_outlier.repeat(k)).view(k, -1)
    if weights is None:
        return per_row.mean(1)
    w = weights.T.to(per_row.dtype)
    return (per_row * w).sum(1) / w.sum(1)


def _dedup_steps(task: PreparedTask, oes: Sequence[torch.Tensor], batch_size: int, gens: Sequence[torch.Generator]):
    """Per step: (x (b+R, K, C, H, W), weights (b+R, K) or None, b) with each candidate's distinct OE rows once.

    Candidate k's batch is the one :func:`balanced_batches` would draw from its
    generator; its distinct OE rows are padded to R, the most any candidate has, with
    copies of its first (weight 0).  A step where no candidate repeats an OE row is the
    plain one (weights None).
    """
    device = task.device
    n = task.train.shape[0]
    for drawn in zip(*(batch_indices(n, len(oe), batch_size, g) for oe, g in zip(oes, gens))):
        b = drawn[0][0].shape[0]
        uniques = [oe_multiplicities(slots) for _, slots in drawn]
        width = max(u.shape[0] for u, _ in uniques)
        if width == b:  # nobody repeats: the duplicated batch itself, slots in drawn order
            xs = [torch.cat([task.prepare(task.train[rows.to(device)]), oe[slots.to(device)]])
                  for (rows, slots), oe in zip(drawn, oes)]
            yield torch.stack(xs, dim=1), None, b
            continue
        xs, ws = [], []
        for (rows, _), (unique, counts), oe in zip(drawn, uniques, oes):
            pad = width - unique.shape[0]
            picks = torch.cat([unique, unique[:1].expand(pad)])
            xs.append(torch.cat([task.prepare(task.train[rows.to(device)]), oe[picks.to(device)]]))
            ws.append(torch.cat([torch.ones(b, dtype=counts.dtype), counts, torch.zeros(pad, dtype=counts.dtype)]))
        yield torch.stack(xs, dim=1), torch.stack(ws, dim=1).to(device), b


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
    del nets  # the packed copy holds the weights now
    model = place_model(packed, settings.channels_last, settings.compile)
    forward = forward_mode(settings.precision, device)
    gens = [batch_generator(s) for s in seeds]
    oes = [task.normalise(images) for images in oe_images]
    augment = task.augmenter(settings.augment)
    dedup = uses_dedup(settings, packed, augment is not None)
    optimiser = torch.optim.Adam(packed.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(settings.milestones), gamma=0.1)
    steps = math.ceil(task.train.shape[0] / settings.batch_size)
    alive = torch.ones(k, dtype=torch.bool, device=device)
    epoch_totals: list[torch.Tensor] = []
    recorded: list[torch.Tensor] = []
    model.train()
    for _ in range(settings.epochs):
        total = torch.zeros(k, device=device, dtype=task.dtype)
        if dedup:
            steps_of_epoch = _dedup_steps(task, oes, settings.batch_size, gens)
        else:
            streams = [balanced_batches(task.train, oe, settings.batch_size, g, augment, task.prepare)
                       for oe, g in zip(oes, gens)]
            steps_of_epoch = ((torch.stack(batches, dim=1), None, batches[0].shape[0] // 2)
                              for batches in zip(*streams))
        for stacked, weights, b in steps_of_epoch:
            # (rows, K, C, H, W) -> (rows, K*C, H, W): candidate k owns channel block k.
            x = place_input(stacked.flatten(1, 2), settings.channels_last)
            is_outlier = torch.arange(x.shape[0], device=device) >= b
            with forward, (weighted_batchnorm(packed, weights, b) if weights is not None else contextlib.nullcontext()):
                out = model(x)
            losses = _per_candidate_loss(objective, out.to(task.dtype), is_outlier, weights)
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
                                lambda px: place_input(task.prepare(px), settings.channels_last),
                                chunk=scoring_chunk(packed.k))
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
    """(K, m) anomaly scores in eval mode; every candidate sees the same test images (``load`` makes them input).

    The input is shared (``PackedLeNet.forward(x, shared=True)``): no K-fold copy of it.
    """
    model.eval()
    parts = []
    for i in range(0, len(images), chunk):
        x = load(images[i : i + chunk])
        out = model(x, shared=True).to(x.dtype)  # (b, K, ...); full precision for scoring
        flat = out.transpose(0, 1).reshape(k * out.shape[0], *out.shape[2:])
        parts.append(objective.score(flat).view(k, -1))
    return torch.cat(parts, dim=1).float().cpu().numpy()
