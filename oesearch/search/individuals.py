"""DEAP's individual and fitness classes, registered once on ``deap.creator``.

An individual is a list of corpus indices whose fitness is maximised (mode
``best``) or minimised (``worst``).  Whoever unpickles a checkpoint imports this
module first: the pickles name these classes.
"""

from __future__ import annotations

from deap import base, creator

__all__ = ["individual_class"]

# DEAP's creator registers classes module-wide; create them once, guarded for reloads.
if not hasattr(creator, "FitnessMax"):
    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
if not hasattr(creator, "FitnessMin"):
    creator.create("FitnessMin", base.Fitness, weights=(-1.0,))
if not hasattr(creator, "IndividualMax"):
    creator.create("IndividualMax", list, fitness=creator.FitnessMax)
if not hasattr(creator, "IndividualMin"):
    creator.create("IndividualMin", list, fitness=creator.FitnessMin)


def individual_class(mode: str) -> type:
    """List subclass whose fitness is maximised (``best``) or minimised (``worst``)."""
    if mode not in ("best", "worst"):
        raise ValueError(f"mode must be 'best' or 'worst', got {mode!r}")
    return creator.IndividualMax if mode == "best" else creator.IndividualMin
