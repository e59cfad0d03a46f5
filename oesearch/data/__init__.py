"""Data: one uint8 image store for every source, decoded once and cached."""

from oesearch.data.sources import conform, corpus_key, load_corpus, load_normal
from oesearch.data.splits import (
    LeaveOneClassOut,
    OneVsRest,
    leave_one_class_out,
    oe_classes,
    oe_subset,
    one_vs_rest,
    split_protocol,
)
from oesearch.data.store import DataError, ImageStore, cached

__all__ = ["DataError", "ImageStore", "LeaveOneClassOut", "OneVsRest", "cached", "conform", "corpus_key",
           "leave_one_class_out", "load_corpus", "load_normal", "oe_classes", "oe_subset", "one_vs_rest",
           "split_protocol"]
