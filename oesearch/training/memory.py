"""How much device memory a packed training needs per candidate, and how many candidates to pack.

:func:`candidate_bytes` is a model of one LeNet candidate's peak memory in a
packed training: its parameters with their gradients and Adam's two moments,
the activations a training step keeps for the backward pass (per row: every
convolution's output, BatchNorm's output, the leaky ReLU's output and the
pooling's int64 indices, the pooled maps, the fully connected layers), the
backward pass's gradient buffers of the largest layer, and the test pass's
live activations for one chunk.  ``tests/test_memory.py`` checks it against
the peak PyTorch's memory profiler measures on the CPU; on a GPU
``benchmarks/gpu_check.sh`` compares it with ``torch.cuda.max_memory_allocated``.

:func:`pack_size` turns it into K: what 80% of free memory holds, capped by
:data:`COMPUTE_CAP` (see there) and by the jobs available.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from oesearch.models.lenet import spec_for_size

__all__ = ["COMPUTE_CAP", "TEST_ROWS", "candidate_bytes", "pack_size", "scoring_chunk", "measured_peak_bytes",
           "MemoryEstimate", "halved", "oom_guard", "parameter_count"]

# At most this many candidates per packed call.  The grouped convolutions of a CIFAR LeNet fill an
# H100/H200-class GPU at about K = 32 (the measurement: throughput saturates there), so a larger
# K buys no speed, only a longer call, a coarser generation tail and a larger loss on an OOM.
COMPUTE_CAP = 32
# Test images per packed test-pass chunk at K = 1; a chunk holds TEST_ROWS // K images so that the
# test pass's activations stay the size of one candidate's, whatever K (no K-fold copy of the input).
TEST_ROWS = 1024
MEMORY_FRACTION = 0.8  # of the free device memory that packing may plan to use; the rest is slack


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one packed candidate, by part."""

    state: int  # parameters, gradients, Adam's two moments
    train_step: int  # activations kept for backward plus the backward's gradient buffers
    test_pass: int  # one test chunk's live activations

    @property
    def total(self) -> int:
        """The peak: the state plus the larger of a training step and the test pass (they never overlap)."""
        return self.state + max(self.train_step, self.test_pass)


def _layers(image_shape: tuple[int, int, int]):
    h, _, channels = image_shape
    spec = spec_for_size(h)
    convs = []  # (cin, cout, side) per convolution
    cin, side = channels, spec.input_size
    for cout in spec.conv_channels:
        convs.append((cin, cout, side))
        cin, side = cout, side // 2
    flat = cin * side * side
    return spec, convs, flat


def parameter_count(image_shape: tuple[int, int, int], head: bool = False, bias: bool = True) -> int:
    spec, convs, flat = _layers(image_shape)
    n = sum(cin * cout * spec.kernel ** 2 + (cout if bias else 0) + 2 * cout for cin, cout, _ in convs)
    n += flat * spec.hidden + (spec.hidden if bias else 0) + 2 * spec.hidden
    n += spec.hidden * spec.features + (spec.features if bias else 0)
    return n + (spec.features + 1 if head else 0)


def candidate_bytes(image_shape: tuple[int, int, int], train_rows: int, test_rows: int = TEST_ROWS,
                    dtype_bytes: int = 4, head: bool = False) -> MemoryEstimate:
    """Peak bytes of one candidate of a packed LeNet training (module docstring).

    ``train_rows``: rows of a training step (2 B, or B + distinct OE rows with
    de-duplication: the weighted BatchNorm keeps its centred input instead of its
    input, the same bytes); ``test_rows``: the candidate's share of a test chunk.
    """
    spec, convs, flat = _layers(image_shape)
    s = dtype_bytes
    state = 4 * parameter_count(image_shape, head) * s  # weights, gradients, Adam exp_avg and exp_avg_sq
    h0, _, c0 = image_shape
    per_row = c0 * h0 * h0 * s  # the input batch
    largest = 0
    for _, cout, side in convs:
        full, pooled = cout * side * side, cout * (side // 2) ** 2
        per_row += 3 * full * s  # conv out (or the weighted BatchNorm's centred copy), BatchNorm out, ReLU out
        per_row += pooled * s + pooled * 8  # the pooled map and its int64 indices
        largest = max(largest, full)
    per_row += 3 * spec.hidden * s + 2 * spec.features * s  # fc1, its BN and ReLU; fc2
    per_row += 2 * largest * s  # backward: the gradient flowing in and the one flowing out at the widest layer
    train = train_rows * per_row
    # Test pass (no autograd): the widest layer's conv output, BatchNorm output and ReLU output may be alive at once.
    test = test_rows * (c0 * h0 * h0 * s + 3 * largest * s)
    return MemoryEstimate(state, train, test)


def scoring_chunk(k: int, rows: int = TEST_ROWS) -> int:
    """Test images per chunk of a K-candidate test pass: in proportion to 1 / K, at least 1."""
    return max(1, rows // max(1, k))


def pack_size(free_bytes: int, per_candidate: int, jobs: int | None = None, cap: int = COMPUTE_CAP,
              fraction: float = MEMORY_FRACTION) -> int:
    """K: the candidates ``fraction`` of ``free_bytes`` holds, at most ``cap`` and ``jobs``, at least 1."""
    k = int(fraction * free_bytes // max(1, per_candidate))
    k = min(k, cap)
    if jobs is not None:
        k = min(k, jobs)
    return max(1, k)


def measured_peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The peak memory ``fn()`` allocates beyond what was allocated before it (bytes).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset.  CPU: the allocation and
    free events of PyTorch's profiler (``profile_memory``), summed in time order.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def oom_guard() -> Iterator[None]:
    """Frees the CUDA cache after an out-of-memory error so that a smaller retry can use it."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise


def halved(k: int) -> int:
    """The K to retry with after an out-of-memory error at ``k``."""
    return max(1, k // 2)
