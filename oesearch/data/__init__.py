"""Data: one uint8 image store for every source, decoded once and cached."""

from oesearch.data.sources import conform, corpus_key, load_corpus, load_normal
from oesearch.data.splits import OneVsRest, one_vs_rest
from oesearch.data.store import DataError, ImageStore, cached

__all__ = ["DataError", "ImageStore", "OneVsRest", "cached", "conform", "corpus_key", "load_corpus", "load_normal", "one_vs_rest"]
