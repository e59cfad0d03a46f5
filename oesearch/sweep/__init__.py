"""Benchmark grids: classes x methods x OE sizes x seeds, each cell one training, and the paper-style tables.

``oesearch benchmark --config search_configs/<experiment>.yaml`` runs one (:mod:`oesearch.experiments.benchmark`).
"""

from oesearch.sweep.cells import BenchData, BenchPlan, BenchSetup, Cell, class_data, oe_index, plan_benchmark
from oesearch.sweep.paper_tables import class_table, oe_size_figure, results_frame, table_markdown

__all__ = ["BenchData", "BenchPlan", "BenchSetup", "Cell", "class_data", "class_table", "oe_index",
           "oe_size_figure", "plan_benchmark", "results_frame", "table_markdown"]
