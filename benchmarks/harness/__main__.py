"""``python -m benchmarks.harness``: what ``scripts/dev bench harness`` runs."""

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main(prog='python -m benchmarks.harness'))
