"""Search entry point: ``python oesearch/run.py --method hsc --mode worst``.

It also works as a standalone script (``ray submit`` copies this file alone to
the head node): it imports the installed ``oesearch`` package and needs nothing
beside it.
"""

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, where
# `data/`, `search/`... would shadow top-level modules of the same names; the
# installed package is what we want.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from oesearch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
