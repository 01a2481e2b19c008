"""Markdown scaling table from the JSON lines benchmarks/scaling.sh writes.

Usage: python benchmarks/scaling_table.py results/scaling.jsonl
"""

from __future__ import annotations

import sys

from hes_mpi.post.benchtables import jsonl_table_main, scaling_markdown

if __name__ == "__main__":
    sys.exit(jsonl_table_main(sys.argv[1:], __doc__, scaling_markdown, "scaling_table.py"))
