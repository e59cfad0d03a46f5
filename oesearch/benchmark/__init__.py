"""Benchmarks: classes x methods x OE sizes x seeds, each cell one training with the search's trainer.

``oesearch benchmark --config search_configs/<experiment>.yaml`` (see :mod:`oesearch.benchmark.cli`).
"""

from oesearch.benchmark.plan import BenchData, BenchPlan, BenchSetup, Cell, class_data, oe_index, plan_benchmark
from oesearch.benchmark.runner import BenchDir, prepare_benchmark, run_benchmark
from oesearch.benchmark.tables import class_table, oe_size_figure, results_frame, table_markdown

__all__ = ["BenchData", "BenchDir", "BenchPlan", "BenchSetup", "Cell", "class_data", "class_table", "oe_index",
           "oe_size_figure", "plan_benchmark", "prepare_benchmark", "results_frame", "run_benchmark",
           "table_markdown"]
