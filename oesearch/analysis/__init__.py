"""Analysis of run directories: loading (finished or running), figures, tables and the HTML report.

The notebooks in ``analysis/`` and ``oesearch report`` are thin layers over these.
"""

from oesearch.analysis.campaign import CampaignError, write_campaign_outputs
from oesearch.analysis.genealogy import ancestry, genealogy_figure
from oesearch.analysis.plots import (best_worst_figures, best_worst_rows, diversity_figure, filter_view, fitness_curves,
                                     population_diversity, progress_figure)
from oesearch.analysis.runs import Run, find_runs, journal_generation_stats, load_run, load_runs, run_images
from oesearch.analysis.tables import compare_table, runs_table

__all__ = ["CampaignError", "Run", "ancestry", "best_worst_figures", "best_worst_rows", "compare_table",
           "diversity_figure", "filter_view", "find_runs", "fitness_curves", "genealogy_figure",
           "journal_generation_stats", "load_run", "load_runs", "population_diversity", "progress_figure",
           "run_images", "runs_table", "show", "write_campaign_outputs"]


def show(fig) -> None:
    """Display a figure in a notebook as the PNG the report embeds (whatever the matplotlib backend)."""
    from IPython.display import Image, display

    from oesearch.results.figures import png_bytes

    display(Image(data=png_bytes(fig)))
