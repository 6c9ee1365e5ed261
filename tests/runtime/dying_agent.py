"""A kata-agent that dies in the middle of CreateContainer (a real death, for the tests).

Used as [hypervisor.process] path (through a small shell wrapper, since that key names an
interpreter): invoked as ``dying_agent.py -m kata_agent --channel-fd N --shared-dir DIR ...``,
it runs the real agent in this process and exits (status 137, like a SIGKILL; PID 1 of its
namespace cannot be signalled from inside it) as soon as the agent has written a
container's config.json into the shared directory, i.e. while it is creating the container.
"""

import glob
import os
import runpy
import sys
import threading
import time


def watch(shared_dir: str) -> None:
    while not glob.glob(os.path.join(shared_dir, "*", "config.json")):
        time.sleep(0.005)
    os._exit(137)


def main() -> None:
    args = sys.argv[1:]
    assert args[:2] == ["-m", "kata_agent"], args
    shared = args[args.index("--shared-dir") + 1]
    threading.Thread(target=watch, args=(shared,), daemon=True).start()
    sys.argv = ["kata_agent", *args[2:]]
    runpy.run_module("kata_agent", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
