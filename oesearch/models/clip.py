"""CLIP zero-shot anomaly detection and BCE-CL (paper Section 3.3, Eq. 4; Appendix G.2), via open_clip.

With prompts v1 = "a photo of a {normal class}" and v2 = "a photo of something",
Eq. 4 scores an image x by the softmax probability of v2 at logit scale 100.
For two prompts that softmax is a sigmoid of the difference of the scaled
cosine similarities, so :class:`ClipDetector` returns that difference as one
logit: the zero-shot score is ``sigmoid(logit)`` (the BCE objective's score),
and BCE-CL, which "minimises the score for normal samples and maximises it for
OE samples", is the BCE loss on that logit.  The prompt features are encoded
once and kept fixed; fine-tuning moves the image encoder (as the paper's code).

Weights come only from a local file: no machine here can download them.
open_clip is an optional dependency (``pip install 'oesearch[clip]'``).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipDetector", "load_clip", "check_clip_weights", "clip_inputs", "clip_transform", "fine_tune_bce_cl",
           "prompts", "ANOMALOUS_PROMPT"]

ANOMALOUS_PROMPT = "a photo of something"
LOGIT_SCALE = 100.0  # Eq. 4's fixed temperature (not the model's learnt logit_scale)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("CLIP needs open_clip: pip install 'oesearch[clip]' (or open_clip_torch)") from err
    return open_clip


def prompts(normal_class: str) -> list[str]:
    """(v1, v2) of Eq. 4: the normal class's prompt, then the anomalous one."""
    return [f"a photo of a {normal_class}", ANOMALOUS_PROMPT]


def check_clip_weights(name: str, weights: str | Path | None) -> Path:
    """The weights file of open_clip model ``name``; FileNotFoundError naming it, and how to obtain it, when absent."""
    path = Path(weights if weights is not None else "").expanduser()
    if weights is None or not path.is_file():
        shown = "no file was given (train.clip.weights is null)" if weights is None else f"{path} is not a file"
        target = path if weights is not None else "a local path and set train.clip.weights to it"
        raise FileNotFoundError(
            f"CLIP weights for {name!r} not found: {shown}. No machine here downloads weights: "
            f"on a machine with internet run `open_clip.create_model({name!r}, pretrained='openai')` (or take the "
            f"checkpoint file of the open_clip model card), save its state_dict with torch.save, and copy the "
            f"file to {target}")
    return path


def load_clip(name: str, weights: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """open_clip model ``name`` with weights from the local file ``weights``, and its tokenizer.

    Raises FileNotFoundError naming the file and how to obtain it when it is absent;
    nothing is ever downloaded.
    """
    path = check_clip_weights(name, weights)
    open_clip = _open_clip()
    model = open_clip.create_model(name, pretrained=str(path), device=device)
    return model, open_clip.get_tokenizer(name)


class ClipDetector(nn.Module):
    """images -> the logit of Eq. 4: 100 * (cos(u, v2) - cos(u, v1)); sigmoid of it is the anomaly score."""

    def __init__(self, clip: nn.Module, tokenizer: Any, normal_class: str) -> None:
        super().__init__()
        self.clip = clip
        with torch.no_grad():
            device = next(clip.parameters()).device
            text = clip.encode_text(tokenizer(prompts(normal_class)).to(device))
        self.register_buffer("text", F.normalize(text.float(), dim=-1))  # (2, D), fixed

    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 2) scaled cosine similarities to (v1, v2)."""
        u = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        # In float32 even under bf16 autocast: at scale 100, bfloat16 would round the logit to ~0.5.
        with torch.autocast(u.device.type, enabled=False):
            return LOGIT_SCALE * u @ self.text.T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.similarities(images)
        return s[:, 1] - s[:, 0]


def clip_transform(clip: nn.Module, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [0, 1], float (N, C, H, W) -> CLIP's inputs: RGB, resized (bicubic) to its image size, its mean/std.

    Per image, so a batch transformed at once equals its images transformed one by one.
    """
    cfg = getattr(clip.visual, "preprocess_cfg", {})
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
    size = clip.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def transform(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey -> RGB: CLIP was trained on colour photos
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
        return (x - mean) / std

    return transform


def clip_inputs(images: np.ndarray, clip: nn.Module) -> torch.Tensor:
    """uint8 (N, H, W, C) -> CLIP's inputs (:func:`clip_transform`), on the CPU."""
    x = torch.tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return clip_transform(clip)(x)


def fine_tune_bce_cl(detector: ClipDetector, normal: torch.Tensor, oe: torch.Tensor, seed: int, epochs: int = 80,
                     lr: float = 1e-4, milestones: Sequence[int] = (50, 60, 70, 75), batch_size: int = 128,
                     momentum: float = 0.9,
                     transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                     forward: contextlib.AbstractContextManager | None = None) -> list[float]:
    """BCE-CL: SGD with Nesterov momentum on balanced batches (B normal + B OE); returns epoch losses.

    Appendix G.2's schedule (lr 1e-4, 2e-5 on the small data sets; x0.1 at each milestone).
    Batches come from ``seed`` alone: per epoch a permutation of ``normal``, per step the
    OE slots, then whatever ``transform`` draws.  ``transform(rows, gen)`` turns the
    gathered rows of ``normal`` and ``oe`` (e.g. uint8 pixels) into CLIP inputs; None:
    they already are.  ``forward`` wraps each forward pass (e.g. bf16 autocast).
    """
    gen = torch.Generator(device=normal.device).manual_seed(seed)
    params = [p for p in detector.clip.visual.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(milestones), gamma=0.1)
    forward = forward if forward is not None else contextlib.nullcontext()
    losses = []
    detector.train()
    for _ in range(epochs):
        total, steps = 0.0, 0
        order = torch.randperm(len(normal), generator=gen, device=normal.device)
        for lo in range(0, len(normal), batch_size):
            x_n = normal[order[lo : lo + batch_size]]
            x = torch.cat([x_n, oe[torch.randint(len(oe), (len(x_n),), generator=gen, device=oe.device)]])
            if transform is not None:
                x = transform(x, gen)
            target = (torch.arange(len(x), device=x.device) >= len(x_n)).float()
            with forward:
                logits = detector(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, steps = total + loss.item(), steps + 1
        schedule.step()
        losses.append(total / steps)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"BCE-CL loss became {losses[-1]}")
    return losses
