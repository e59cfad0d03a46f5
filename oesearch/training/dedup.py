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


class _WeightedNorm(torch.autograd.Function):
    """y = (x - mean) * invstd * gamma + beta with the weighted batch statistics' gradient in backward.

    ``mean``/``invstd`` arrive as constants; backward adds what flows through them.  With
    dy the gradient at the distinct rows (a row of weight w carries w copies' gradient),
    the duplicated batch's BatchNorm backward summed over each row's copies is
    ``a (dy - w k1 - w x_hat k2)``, a = gamma * invstd, k1 = sum(dy) / n,
    k2 = sum(dy x_hat) / n, the sums plain over the distinct rows.  Rows before
    ``start`` have weight 1 (the bulk formula); rows from ``start`` on are corrected by
    their ``extra`` = w - 1.
    """

    @staticmethod
    def forward(ctx, x, mean, invstd, gamma, beta, extra, start, count):
        view = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        scale = invstd if gamma is None else invstd * gamma
        shift = -mean * scale if beta is None else beta - mean * scale
        ctx.save_for_backward(x, mean, invstd, gamma, extra, count)
        ctx.start = start
        ctx.affine = (gamma is not None, beta is not None)
        return torch.addcmul(shift.view(view), x, scale.view(view))

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, gamma, extra, count = ctx.saved_tensors
        start = ctx.start
        view = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        red = (0,) + tuple(range(2, x.dim()))
        sum_dy = dy.sum(red)
        sum_dy_xhat = ((dy * x).sum(red) - mean * sum_dy) * invstd
        a = invstd if gamma is None else invstd * gamma
        k1, k2 = sum_dy / count, sum_dy_xhat / count
        dx = dy * a.view(view)
        dx.addcmul_(x, (-a * k2 * invstd).view(view))
        dx.add_((a * (k2 * invstd * mean - k1)).view(view))
        tail = (x[start:] - mean.view(view)) * invstd.view(view)  # x_hat of the rows with weights other than 1
        e = extra.view(extra.shape + (1,) * (x.dim() - 2))
        dx[start:] -= e * a.view(view) * (k1.view(view) + tail * k2.view(view))
        grad_gamma = sum_dy_xhat if ctx.affine[0] else None
        grad_beta = sum_dy if ctx.affine[1] else None
        return dx, None, None, grad_gamma, grad_beta, None, None, None


def weighted_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weights: torch.Tensor,
                        start: int = 0) -> torch.Tensor:
    """``bn``'s training-mode forward on rows that stand for ``weights`` copies each (module docstring).

    ``weights``: (N,) or (N, G) with G dividing the channels; every group's weights sum to the full batch size.
    ``start``: the rows before it all have weight 1 (the normal half), which spares them the weighting.
    In eval mode it is ``bn``'s own forward.
    """
    if not bn.training:
        return nn.modules.batchnorm._BatchNorm.forward(bn, x)
    n_rows, channels = x.shape[0], x.shape[1]
    w = weights if weights.dim() == 2 else weights[:, None]
    groups = w.shape[1]
    if channels % groups:
        raise ValueError(f"{groups} weight groups do not split {channels} channels evenly")
    dtype = x.dtype
    # In at least float32 (under bf16 autocast the convolution's output is bfloat16).
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    w = w.to(xf.dtype)
    wc = w.repeat_interleave(channels // groups, dim=1) if groups > 1 else w.expand(n_rows, channels)  # (N, C)
    spatial = x[0, 0].numel()
    inner = tuple(range(2, x.dim()))
    view = (1, channels) + (1,) * (x.dim() - 2)
    with torch.no_grad():
        # Every row once (one fused pass), then the rows from ``start`` on with their extra weight w - 1.
        # (native_batch_norm's statistics pass is several times faster than var_mean over (0, 2, 3) on CPU.)
        _, mean_all, invstd_all = torch.native_batch_norm(xf, None, None, None, None, True, 0.0, 0.0)
        var_all = invstd_all.pow(-2)
        extra = wc[start:] - 1  # (R, C)
        tail = xf[start:] - mean_all.view(view)
        per_row = (lambda t: t.sum(inner)) if inner else (lambda t: t)
        s1 = (extra * per_row(tail)).sum(0)
        s2 = (extra * per_row(tail * tail)).sum(0)
        n_all = n_rows * spatial
        count = wc.sum(0) * spatial  # (C,) the full batch's element count per channel
        delta = s1 / count
        mean = mean_all + delta
        var = ((n_all * var_all + s2) / count - delta * delta).clamp_min(0)
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1)
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
        invstd = torch.rsqrt(var + bn.eps)
    gamma = bn.weight.to(xf.dtype) if bn.affine else None
    beta = bn.bias.to(xf.dtype) if bn.affine else None
    out = _WeightedNorm.apply(xf, mean, invstd, gamma, beta, extra, start, count)
    return out.to(dtype)


@contextlib.contextmanager
def weighted_batchnorm(model: nn.Module, weights: torch.Tensor, start: int = 0) -> Iterator[None]:
    """Within the block, every BatchNorm of ``model`` in training mode uses :func:`weighted_batch_norm`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = functools.partial(weighted_batch_norm, bn, weights=weights, start=start)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward  # back to the class's forward
