"""Command line entry point of kata-proxy (filled in by its own issue)."""

import sys


def main(argv=None):
    sys.stderr.write("kata-proxy: not built yet in this version of kata-py\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
