"""Every random number in a run descends from one run seed.

Seeds for sub-streams (a repetition, a validation seed, a generation) are
derived by hashing the run seed together with a label, so that adding a new
consumer never shifts the numbers an existing one sees.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(run_seed: int, *labels: object) -> int:
    """A 31-bit seed determined by ``run_seed`` and ``labels`` alone.

    >>> derive_seed(0, "repetition", 1) == derive_seed(0, "repetition", 1)
    True
    """
    text = "/".join([str(int(run_seed)), *map(str, labels)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)
