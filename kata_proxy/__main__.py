import sys

from kata_proxy.cli import main  # tunes malloc for bulk transfers first (yamux.tune_malloc)

sys.exit(main())
