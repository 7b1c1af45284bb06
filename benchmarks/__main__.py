"""`python -m benchmarks all [...]`: the whole suite (benchmarks/suite.py)."""

from __future__ import annotations

import sys

from benchmarks import suite

if __name__ == "__main__":
    if sys.argv[1:2] != ["all"]:
        raise SystemExit("usage: python -m benchmarks all [--smoke] [--out FILE] [--budget S]")
    suite.main(sys.argv[2:])
