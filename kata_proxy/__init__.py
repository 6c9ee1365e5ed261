"""kata-proxy: the per-VM multiplexing proxy of kata-py (see README.md beside this file)."""

__version__ = "0.1.0"
