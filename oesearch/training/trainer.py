"""The one trainer: train phi from scratch on normal data plus OE, then score the test set.

Batches are balanced (paper Appendix G): each step takes B normal images and B
OE images.  With a single OE image the OE half is that image repeated B times.
Data lives on the device as uint8 pixels prepared once per worker
(:class:`PreparedTask`) and is filtered and normalised per batch there; only
the OE image(s) and a seed arrive per training.

Batches are drawn from a generator on the CPU whatever the device (the indices
then move to it), so one seed gives the same batches on CPU and GPU.  When the
OE half repeats rows and no augmentation acts on it, each distinct OE row is
computed once and carries its multiplicity (``train.dedup``, see
:mod:`oesearch.training.dedup`): the same function of the weights, at about
half the arithmetic with one OE image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from oesearch.models import REFERENCE, ModelSetup, build_model, resolve_setup
from oesearch.training.augment import Augment, frequency_filter
from oesearch.training.auc import roc_auc
from oesearch.training.dedup import dedup_supported, oe_multiplicities, weighted_batchnorm
from oesearch.training.execution import forward_mode, matmul_mode, place_input, place_model
from oesearch.training.types import NonFiniteLossError, Objective, TrainResult, TrainSettings

__all__ = [
    "TrainSettings", "PreparedTask", "TrainResult", "NonFiniteLossError", "train_and_evaluate", "to_tensor",
    "to_pixels", "seeded_model", "setup_for", "balanced_batches", "batch_indices", "anomaly_scores",
    "batch_generator", "uses_dedup",
]


def to_pixels(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W) on ``device``, a view of the NHWC memory (channels-last strides)."""
    # A copy: the arrays arrive read-only from Ray's object store or a memmap.
    return torch.tensor(np.asarray(images), device=device).permute(0, 3, 1, 2)


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    return to_pixels(images, device).float().div_(255.0)


OE_UPFRONT_BYTES = 256 * 2**20  # OE sets whose float copy fits this are normalised once; larger ones per batch


@dataclass
class PreparedTask:
    """A one-vs-rest task resident on one device as uint8, normalised per batch by the normal class's statistics.

    Keeping pixels as uint8 quarters the device memory for the data.  :meth:`prepare`
    applies, per batch, exactly the elementwise steps (and the per-image filter) that
    normalising the whole set up front would, so a batch's values are bit-identical.
    """

    train: torch.Tensor  # (n, C, H, W) uint8 normal training pixels (NHWC memory)
    test: torch.Tensor  # (m, C, H, W) uint8 test pixels (NHWC memory)
    test_anomalous: np.ndarray  # (m,) bool
    mean: torch.Tensor  # (1, C, 1, 1) in ``dtype``
    std: torch.Tensor  # (1, C, 1, 1) in ``dtype``
    image_shape: tuple[int, int, int]  # (H, W, C)
    filter: tuple[str, int] | None = None  # ("lpf" | "hpf", magnitude) applied to every image, or None
    dtype: torch.dtype = torch.float32  # what batches (and the model) compute in

    @classmethod
    def from_arrays(
        cls,
        normal_train: np.ndarray,
        test_images: np.ndarray,
        test_anomalous: np.ndarray,
        device: torch.device | str = "cpu",
        filter: tuple[str, int] | None = None,
    ) -> "PreparedTask":
        """Normal train and test pixels on ``device``; statistics of the (filtered, if asked) train set."""
        filt = _filter_fn(filter)
        train = to_pixels(normal_train, device)
        # The statistics come from one float copy of the whole set, as before the data became
        # uint8, so they (and every result) stay bit-identical; the copy is freed on return.
        full = filt(train.float().div_(255.0))
        mean = full.mean(dim=(0, 2, 3), keepdim=True)
        # A constant channel (std 0) would divide by zero; leave it unscaled.
        std = full.std(dim=(0, 2, 3), keepdim=True)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        del full
        return cls(
            train=train,
            test=to_pixels(test_images, device),
            test_anomalous=np.asarray(test_anomalous, dtype=bool),
            mean=mean,
            std=std,
            image_shape=tuple(normal_train.shape[1:]),
            filter=tuple(filter) if filter else None,
        )

    @property
    def device(self) -> torch.device:
        return self.train.device

    def astype(self, dtype: torch.dtype) -> "PreparedTask":
        """The same task computing in ``dtype`` (e.g. float64 for exact comparisons); pixels are shared."""
        return dataclasses.replace(self, mean=self.mean.to(dtype), std=self.std.to(dtype), dtype=dtype)

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on the device -> filtered, normalised ``dtype`` batch."""
        return (_filter_fn(self.filter)(pixels.to(self.dtype).div_(255.0)) - self.mean) / self.std

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) images -> (filtered,) normalised tensors on this task's device."""
        return self.prepare(to_pixels(images, self.device))

    def augmenter(self, augment: Augment) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
        """Normalised batch -> augmented normalised batch (augmentation acts on pixels); None when off."""
        if not augment.active:
            return None
        mean, std = self.mean, self.std
        return lambda x, gen: (augment(x * std + mean, gen) - mean) / std


def _filter_fn(filter: tuple[str, int] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if not filter:
        return lambda x: x
    kind, magnitude = filter
    return lambda x: frequency_filter(x, kind, magnitude)


def setup_for(objective: Objective, settings: TrainSettings) -> ModelSetup:
    """The network setup a training uses: ``settings.model``, else the reference's, bias-free for Deep SVDD/SAD."""
    return settings.model if settings.model is not None else resolve_setup(objective.name)


def seeded_model(image_shape: tuple[int, int, int], head: bool, seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, setup: ModelSetup = REFERENCE) -> torch.nn.Module:
    """A fresh phi initialised from ``seed`` (in float32, then cast), without touching the global RNG."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return build_model(image_shape, head=head, setup=setup).to(device, dtype)


def batch_generator(seed: int) -> torch.Generator:
    """The generator a training draws its batches (and augmentations) from: on the CPU, on every device."""
    return torch.Generator(device="cpu").manual_seed(seed)


def batch_indices(n: int, n_oe: int, batch_size: int, gen: torch.Generator):
    """One epoch's ``(normal rows, OE slots)`` per step, as CPU index tensors drawn from ``gen``.

    A permutation of the ``n`` normal rows per epoch, then per step ``b`` OE slots
    uniform over the ``n_oe`` OE images.  The generator is lazy: whatever the caller
    draws from ``gen`` between steps (the augmentation) comes in between.
    """
    order = torch.randperm(n, generator=gen, device=gen.device)
    for lo in range(0, n, batch_size):
        rows = order[lo : lo + batch_size]
        yield rows, torch.randint(n_oe, (rows.shape[0],), generator=gen, device=gen.device)


def balanced_batches(train: torch.Tensor, oe: torch.Tensor, batch_size: int, gen: torch.Generator,
                     transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                     load: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     load_oe: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """One epoch of batches ``cat([B normal, B outliers])`` drawn from ``gen``.

    ``load`` turns the gathered rows of ``train`` into model input (e.g.
    :meth:`PreparedTask.prepare` for uint8 pixels); None: they already are.
    ``load_oe`` does the same for the gathered rows of ``oe``.

    The single definition of the sampling order (:func:`batch_indices`): a
    permutation per epoch, then per step the OE slots, then the augmentation's
    parameters.  ``gen`` may live on the CPU while the data is on a GPU (the
    trainers' does, :func:`batch_generator`); the indices move to the data.  The
    packed trainer replays it per candidate, so a packed candidate sees exactly
    the batches of an unpacked training.
    """
    device = train.device
    for rows, slots in batch_indices(train.shape[0], len(oe), batch_size, gen):
        normal = train[rows.to(device)]
        if load is not None:
            normal = load(normal)
        outliers = oe[slots.to(oe.device)]
        if load_oe is not None:
            outliers = load_oe(outliers)
        x = torch.cat([normal, outliers])
        yield x if transform is None else transform(x, gen)


def dedup_batches(train: torch.Tensor, oe: torch.Tensor, batch_size: int, gen: torch.Generator,
                  load: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  load_oe: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The batches of :func:`balanced_batches` (no augmentation) with each distinct OE row once.

    Yields ``(x, weights, b)``: ``x = cat([b normal, u distinct outliers])`` and the
    rows' multiplicities, ones for the normal half; they sum to ``2 b``.  A batch
    without repeats is the plain one (its slots in drawn order) with weights None.  Only the
    OE half is de-duplicated (a normal row occurs once per epoch).
    """
    device = train.device
    for rows, slots in batch_indices(train.shape[0], len(oe), batch_size, gen):
        normal = train[rows.to(device)]
        if load is not None:
            normal = load(normal)
        unique, counts = oe_multiplicities(slots)
        repeats = unique.shape[0] < slots.shape[0]
        outliers = oe[(unique if repeats else slots).to(oe.device)]
        if load_oe is not None:
            outliers = load_oe(outliers)
        weights = torch.cat([torch.ones(rows.shape[0], dtype=counts.dtype), counts]).to(device) if repeats else None
        yield torch.cat([normal, outliers]), weights, rows.shape[0]


def uses_dedup(settings: TrainSettings, net: torch.nn.Module, augment_active: bool) -> bool:
    """Whether a training de-duplicates its OE rows: asked, no augmentation, eager, and exact for ``net``.

    ``torch.compile`` keeps the duplicated batch: the weighted BatchNorm swaps a module's
    forward per step, which a compiled graph would not see.
    """
    return settings.dedup and not augment_active and not settings.compile and dedup_supported(net)


def train_and_evaluate(
    task: PreparedTask,
    oe_images: np.ndarray,
    objective: Objective,
    settings: TrainSettings,
    seed: int,
    record_steps: int = 0,
) -> TrainResult:
    """Train a fresh phi with ``oe_images`` as the only outliers; return its test AUC.

    Everything random (initialisation, batch order, which OE image fills each
    slot) comes from ``seed``.  Raises :class:`NonFiniteLossError` when the
    loss diverges; it is checked once per epoch to avoid a host sync per step.
    """
    start = time.perf_counter()
    with matmul_mode(settings.precision, task.device):
        if hasattr(objective, "fit_and_score"):  # CLIP: its own network, inputs and optimiser (training/clip.py)
            result = objective.fit_and_score(task, oe_images, settings, seed)
        else:
            result = _train(task, oe_images, objective, settings, seed, record_steps)
    result.seconds = time.perf_counter() - start
    return result


def _train(task: PreparedTask, oe_images: np.ndarray, objective: Objective, settings: TrainSettings, seed: int,
           record_steps: int) -> TrainResult:
    device = task.device
    net = seeded_model(task.image_shape, objective.head, seed, device, task.dtype, setup_for(objective, settings))
    if hasattr(objective, "prepare"):  # e.g. DSAD/DSVDD's centre, from the same preprocessed train inputs
        objective = objective.prepare(net, task.prepare(task.train))
    uses_oe = getattr(objective, "uses_oe", True)
    model = place_model(net, settings.channels_last, settings.compile)
    forward = forward_mode(settings.precision, device)
    gen = batch_generator(seed)
    # A few OE images are normalised once; a large OE set (a whole corpus, up to 80MTI's 300K) stays uint8
    # on the device and is prepared per batch, a quarter of the memory. Both give bit-identical batches.
    oe_per_batch = np.asarray(oe_images).size * 4 > OE_UPFRONT_BYTES
    oe = to_pixels(oe_images, device) if oe_per_batch else task.normalise(oe_images)
    augment = task.augmenter(settings.augment)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(settings.milestones), gamma=0.1)

    epoch_losses: list[float] = []
    recorded: list[torch.Tensor] = []  # detached step losses, read once at the end (no sync per step)
    dedup = uses_oe and uses_dedup(settings, net, augment is not None)
    load_oe = task.prepare if oe_per_batch else None
    model.train()
    for epoch in range(settings.epochs):
        total = torch.zeros((), device=device)
        steps = 0
        if dedup:
            batches = dedup_batches(task.train, oe, settings.batch_size, gen, task.prepare, load_oe)
        else:
            batches = ((x, None, x.shape[0] // 2) for x in
                       balanced_batches(task.train, oe, settings.batch_size, gen, augment, task.prepare, load_oe))
        for x, weights, b in batches:
            if not uses_oe:  # unsupervised: OE reaches neither the loss nor the BatchNorm statistics
                x = x[:b]
                if b < 2:  # a last batch of one image has no batch statistics: training BatchNorm refuses it
                    continue
            steps += 1
            is_outlier = torch.arange(x.shape[0], device=device) >= b
            with forward, (weighted_batchnorm(net, weights, b) if weights is not None else contextlib.nullcontext()):
                out = model(place_input(x, settings.channels_last))
            per_row = objective.loss(out.to(task.dtype), is_outlier)
            loss = per_row.mean() if weights is None else (per_row * weights.to(per_row.dtype)).sum() / (2 * b)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.detach()
            if len(recorded) < record_steps:
                recorded.append(loss.detach())
        schedule.step()
        mean_loss = total.item() / steps
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"loss became {mean_loss} in epoch {epoch + 1}/{settings.epochs}")
        epoch_losses.append(mean_loss)

    with forward:
        scores = anomaly_scores(model, objective, task.test,
                                load=lambda px: place_input(task.prepare(px), settings.channels_last))
    if not np.all(np.isfinite(scores)):
        raise NonFiniteLossError("the trained model produced non-finite anomaly scores")
    auc = roc_auc(task.test_anomalous, scores)
    step_losses = torch.stack(recorded).tolist() if recorded else []
    return TrainResult(auc=auc, epoch_losses=epoch_losses, step_losses=step_losses)


@torch.no_grad()
def anomaly_scores(model: torch.nn.Module, objective: Objective, images: torch.Tensor, chunk: int = 2048,
                   load: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Scores for ``images`` (each chunk passed through ``load`` first) with the model in eval mode."""
    model.eval()
    load = load or (lambda x: x)
    parts = []
    for i in range(0, len(images), chunk):
        x = load(images[i : i + chunk])
        # Back to the input's dtype: under bf16 autocast the output is bfloat16; score in full precision.
        parts.append(objective.score(model(x).to(x.dtype)))
    return torch.cat(parts).float().cpu().numpy()
