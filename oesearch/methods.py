"""The method registry: every objective oesearch trains, and what each can do.

The one place that says which methods exist and which are packable, need a
centre, use the OE images or run on CLIP.  Config validates against it,
training builds objectives from it and the command line offers its names.
Torch-free, so reading it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS", "NAMES", "CLIP_METHODS", "method", "packable"]


@dataclass(frozen=True)
class Method:
    """One objective and its capabilities."""

    name: str
    summary: str
    uses_oe: bool = True  # False: the OE half of a batch never reaches the network (one-class training)
    needs_centre: bool = False  # a hypersphere centre c is fixed from the initial network before training
    clip: bool = False  # trains (or only scores) a pretrained CLIP model instead of phi (train.clip)

    @property
    def packable(self) -> bool:
        """Whether K candidates can train as one packed program (oesearch.training.packed).

        Packing replays one shared schedule per candidate; a per-candidate centre and
        CLIP's own training loop do not fit it, and a method without OE has no candidate to pack.
        """
        return self.uses_oe and not self.needs_centre and not self.clip


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("hsc", "hypersphere classifier (paper Section 3.2)"),
    Method("bce", "binary cross-entropy, normal vs. OE"),
    Method("focal", "focal loss (paper Section 4)"),
    Method("dsad", "Deep SAD: ||z - c||^2 for normal data, its inverse for OE", needs_centre=True),
    Method("dsvdd", "one-class Deep SVDD on normal data only; OE is never used", uses_oe=False, needs_centre=True),
    Method("clip_zero_shot", "CLIP zero-shot prompts; no training, OE unused", uses_oe=False, clip=True),
    Method("bce_cl", "CLIP fine-tuned with BCE against the OE (paper Appendix G.2)", clip=True),
)}
NAMES: tuple[str, ...] = tuple(METHODS)
CLIP_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.clip)


def method(name: str) -> Method:
    """The registry entry of ``name``; a clear error for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {list(NAMES)}") from None


def packable(name: str) -> bool:
    """Whether method ``name`` trains packed (False for a name outside the registry)."""
    return name in METHODS and METHODS[name].packable
