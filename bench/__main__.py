import sys

from bench.cli import main

if __name__ == "__main__":  # guarded: forkserver children re-import the main module
    sys.exit(main())
