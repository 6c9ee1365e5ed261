"""``python -m kata_runtime``: the same as the kata-runtime command."""

import sys

from kata_runtime.cli import main

sys.exit(main())
