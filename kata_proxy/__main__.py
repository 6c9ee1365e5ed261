import sys

from kata_proxy.cli import main

sys.exit(main())
