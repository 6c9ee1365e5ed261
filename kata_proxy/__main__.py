import sys

from yamux import tune_malloc

tune_malloc()  # bulk transfers through the proxy (yamux._malloc; YAMUX_MALLOC_TUNING=0 skips it)

from kata_proxy.cli import main  # noqa: E402

sys.exit(main())
