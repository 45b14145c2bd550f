"""Run every benchmark (same as ``opu bench``): python benchmarks/run_all.py [--quick] [--repeats N]."""

import sys

from opu_tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
