"""Run directories, journal, checkpoints, figures and the summary."""

from oesearch.results.summary import search_fitness_table, write_outputs
from oesearch.results.rundir import RunDir, read_journal

__all__ = ["RunDir", "read_journal", "search_fitness_table", "write_outputs"]
