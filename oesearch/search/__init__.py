"""What the search is: evolution (DEAP), neighbours (FAISS), the fitness cache and problem, statistics, validation.

It runs jobs through a ``run_jobs`` callable it is handed; :mod:`oesearch.distributed` and
:mod:`oesearch.experiments` supply one that dispatches them to Ray."""

from oesearch.search.evolution import Evolution, EvolutionState
from oesearch.search.fitness import FitnessCache, Job
from oesearch.search.individuals import individual_class
from oesearch.search.neighbours import NeighbourIndex
from oesearch.search.problem import FitnessProblem

__all__ = ["Evolution", "EvolutionState", "FitnessCache", "FitnessProblem", "Job", "NeighbourIndex", "individual_class"]
