"""How a training executes: numeric precision, memory layout and ``torch.compile``.

Three switches under ``train`` (all off by default, which is the plain float32
eager training every earlier result came from):

* ``precision``: ``fp32`` leaves PyTorch's defaults alone; ``bf16`` runs the
  forward pass (training and scoring) under ``torch.autocast`` in bfloat16 on
  the device's type (CUDA, or CPU where oneDNN uses AVX512-BF16/AMX if present)
  while parameters, optimiser state and the loss stay float32; ``tf32`` lets
  CUDA matmuls and cuDNN convolutions use TF32 for the training.  On CPU
  ``tf32`` changes nothing (there is no TF32 path) and so equals ``fp32``.
  Note that ``fp32`` on CUDA keeps PyTorch's defaults: matmuls in full float32,
  but cuDNN convolutions may already use TF32 (``torch.backends.cudnn.allow_tf32``
  is True by default); ``tf32`` adds TF32 matmuls.  ``tf32`` with ``compile`` is
  refused (``TrainSettings``, config): ``tf32`` writes the ``fp32_precision`` API,
  after which inductor's reads of the legacy flags raise (pytorch#166387).
* ``channels_last``: model weights and every input batch in NHWC memory order
  (what tensor cores and oneDNN prefer for convolutions).
* ``compile``: ``torch.compile`` on the model (inductor; on CPU it needs a C++
  compiler).  A training's first steps pay the compilation.

They apply identically to the unpacked and the packed trainer.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["PRECISIONS", "check_precision", "matmul_mode", "forward_mode", "place_model", "place_input",
           "configure_device"]

PRECISIONS = ("fp32", "bf16", "tf32")


def check_precision(precision: str) -> None:
    """Raise ValueError for a precision no trainer supports."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")


def forward_mode(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Context for forward passes: bf16 autocast on ``device``'s type, else nothing.

    Only the forward runs under autocast (as PyTorch recommends); the trainers cast
    the output back to the task's dtype before the loss, so losses stay float32.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Context for a whole training: with tf32 on CUDA, TF32 matmuls and convolutions (backward too)."""
    if precision == "tf32" and device.type == "cuda":
        # Process-wide flags: restore them so that nothing else in the process is affected.
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:
        yield


def configure_device(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """Process-wide settings of a worker that trains on ``device``: cuDNN's autotuner (``train.cudnn_benchmark``).

    Every training of a worker has the same shapes (the batch, the last batch, the test
    chunks), so cuDNN's per-shape search for the fastest convolution pays once per
    process.  Its choice may differ between runs, which changes float rounding only.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark


def place_model(model: torch.nn.Module, channels_last: bool, compile: bool) -> torch.nn.Module:
    """``model`` in channels-last memory and/or compiled; the returned module shares its parameters."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # dynamic=None: the first shape compiles static, a second (the last, smaller batch; the
        # test chunks) recompiles once with dynamic sizes instead of once per size.
        model = torch.compile(model)
    return model


def place_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D batch in channels-last memory when asked; otherwise as it is."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
