"""The composition layer: every kind of run is a thin root on one run context.

- :mod:`~oesearch.experiments.context`: run directory, config, cluster, workers, dispatcher, journal,
  mirror, metrics and shutdown, built once for every root;
- :mod:`~oesearch.experiments.search`: one search (evolution, validation, outputs);
- :mod:`~oesearch.experiments.benchmark`: a benchmark grid and its tables;
- :mod:`~oesearch.experiments.evaluate` and :mod:`~oesearch.experiments.signal`: given images over N seeds,
  and how much of a fitness is the image.
"""
