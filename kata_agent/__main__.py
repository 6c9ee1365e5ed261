"""`python -m kata_agent ...` = the kata-agent command (used by the process sandbox driver)."""

import sys

from kata_agent.cli import main

sys.exit(main())
