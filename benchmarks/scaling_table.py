"""Markdown scaling table from the JSON lines benchmarks/scaling.sh writes.

Usage: python benchmarks/scaling_table.py results/scaling.jsonl
"""

from __future__ import annotations

import json
import sys

from hes_mpi.post.benchtables import scaling_markdown


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(args[0]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        print(f"scaling_table.py: error: {args[0]}: {e}", file=sys.stderr)
        return 2
    print(scaling_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
