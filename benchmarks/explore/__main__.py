"""``python -m benchmarks.explore``: what ``scripts/dev bench explore`` runs (benchmarks/harness/explorer.py)."""

import sys

from benchmarks.harness.explorer import main

if __name__ == '__main__':
    sys.exit(main(prog='scripts/dev bench explore'))
