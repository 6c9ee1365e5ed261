import sys

from kata_shim.cli import main

sys.exit(main())
