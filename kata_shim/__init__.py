"""kata-shim: the per-process stdio, signal and exit-code relay (see README.md and cli.py)."""
