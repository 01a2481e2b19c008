"""``python -m hes_mpi``: the command line (:mod:`hes_mpi.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
