"""`python -m kata_agent ...` = the kata-agent command (used by the process sandbox driver).

The cycle collector is off while the agent imports and starts its server (its start-up is
on every sandbox's critical path; imports make many objects and no garbage); kata_agent.cli
turns it back on once the agent serves.
"""

import gc
import sys

gc.disable()

from yamux import tune_malloc  # noqa: E402

tune_malloc()  # bulk transfers over the agent's yamux channel (yamux._malloc; YAMUX_MALLOC_TUNING=0 skips it)

from kata_agent.cli import main  # noqa: E402

sys.exit(main())
