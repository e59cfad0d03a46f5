"""Ray: the cluster connection, the Dispatcher, the worker base and its fitness and cell workers, metrics.

Nothing here knows what a search or a benchmark is beyond the job it is handed;
:mod:`oesearch.experiments` composes these parts into runs.
"""
