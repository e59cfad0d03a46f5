"""Exact OE de-duplication: each distinct OE row of a batch is computed once and carries its multiplicity.

With one OE image and no augmentation acting on the OE half, which is how the
paper's searches train, the OE half of a batch ``cat([B normal, B outliers])``
is B copies of one image; with ``oe_size`` > 1 it is the drawn slots' images,
with repeats.  Every layer of the networks acts on each row alone except
BatchNorm, whose training-mode statistics couple the rows.  So a batch of the
distinct rows, each with weight = how often it occurs, in

- BatchNorm's batch mean and (biased) variance: weighted sums over rows divided
  by the full batch size n = sum of the weights (times H x W);
- the running statistics: the same mean, and the variance with the unbiased
  correction n / (n - 1) of the *full* batch, with PyTorch's momentum rule;
- the loss mean: sum of weight x loss over the full batch size,

is the same function of the weights as the duplicated batch: the losses, the
gradients and the running statistics agree up to float rounding
(``tests/test_dedup.py`` checks that against the duplicated batch).

:func:`weighted_batchnorm` swaps every BatchNorm's forward for the weighted one
for the duration of one training step.  Weights may be per row, shape (N,), or
per row and channel group, shape (N, G), where the G groups split the channels
evenly: the packed trainer's candidate k owns channel block k, and each
candidate has its own multiplicities (rows a candidate lacks carry weight 0).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from torch import nn

__all__ = ["weighted_batch_norm", "weighted_batchnorm", "oe_multiplicities", "dedup_supported"]

# Modules whose training-mode output for a row depends on something other than that row
# (beyond BatchNorm, which is handled): with any of them a de-duplicated batch would not be exact.
_ROW_COUPLING = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                 nn.SyncBatchNorm, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def dedup_supported(model: nn.Module) -> bool:
    """Whether de-duplication is exact for ``model``: no dropout, and every BatchNorm a plain tracked one."""
    for m in model.modules():
        if isinstance(m, _ROW_COUPLING):
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            return False
    return True


def oe_multiplicities(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct OE indices of a batch's slots and how often each occurs (both on ``slots``' device)."""
    unique, counts = torch.unique(slots, sorted=True, return_counts=True)
    return unique, counts


def weighted_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``bn``'s training-mode forward on rows that stand for ``weights`` copies each (module docstring).

    ``weights``: (N,) or (N, G) with G dividing the channels; every group's weights sum to the full batch size.
    In eval mode (or without tracked statistics in eval) it is ``bn``'s own forward.
    """
    if not bn.training:
        return nn.modules.batchnorm._BatchNorm.forward(bn, x)
    n_rows, channels = x.shape[0], x.shape[1]
    w = weights if weights.dim() == 2 else weights[:, None]
    groups = w.shape[1]
    if channels % groups:
        raise ValueError(f"{groups} weight groups do not split {channels} channels evenly")
    dtype = x.dtype
    # Statistics in at least float32 (under bf16 autocast the convolution's output is bfloat16).
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    w = w.to(xf.dtype)
    wc = w.repeat_interleave(channels // groups, dim=1) if groups > 1 else w.expand(n_rows, channels)  # (N, C)
    spatial = x[0, 0].numel()
    reduce_inner = tuple(range(2, x.dim()))
    per_row = (lambda t: t.sum(reduce_inner)) if reduce_inner else (lambda t: t)  # (N, C)
    view = (1, channels) + (1,) * (x.dim() - 2)
    count = wc.sum(0) * spatial  # (C,) the full batch's element count per channel
    mean = (wc * per_row(xf)).sum(0) / count
    centred = xf - mean.view(view)
    var = (wc * per_row(centred * centred)).sum(0) / count  # biased, as BatchNorm normalises with
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1)
            bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.detach().to(bn.running_var.dtype), alpha=factor)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.to(scale.dtype)
        out = torch.addcmul(bn.bias.to(scale.dtype).view(view), centred, scale.view(view))
    else:
        out = centred * scale.view(view)
    return out.to(dtype)


@contextlib.contextmanager
def weighted_batchnorm(model: nn.Module, weights: torch.Tensor) -> Iterator[None]:
    """Within the block, every BatchNorm of ``model`` in training mode uses :func:`weighted_batch_norm`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = functools.partial(weighted_batch_norm, bn, weights=weights)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward  # back to the class's forward
