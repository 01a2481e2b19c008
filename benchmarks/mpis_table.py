"""Markdown table of MPICH against Open MPI from the JSON lines benchmarks/mpis.sh writes.

Usage: python benchmarks/mpis_table.py results/mpis.jsonl
"""

from __future__ import annotations

import sys

from hes_mpi.post.benchtables import jsonl_table_main, mpis_markdown

if __name__ == "__main__":
    sys.exit(jsonl_table_main(sys.argv[1:], __doc__, mpis_markdown, "mpis_table.py"))
