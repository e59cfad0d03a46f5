"""The search: evolution (DEAP), neighbours (FAISS), fitness dispatch (Ray)."""

from oesearch.search.evolution import Evolution, EvolutionState, individual_class
from oesearch.search.fitness import FitnessCache, Job
from oesearch.search.neighbours import NeighbourIndex
from oesearch.search.problem import FitnessProblem

__all__ = ["Evolution", "EvolutionState", "FitnessCache", "FitnessProblem", "Job", "NeighbourIndex", "individual_class"]
