"""Command line entry point of kata-agent (filled in by its own issue)."""

import sys


def main(argv=None):
    sys.stderr.write("kata-agent: not built yet in this version of kata-py\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
