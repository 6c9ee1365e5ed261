"""Exit statuses of kata-shim (also in kata_shim/README.md and `kata-shim --help`).

| status | when |
|--------|------|
| the process's | the relayed process ended: its exit code, 128+N when signal N killed it (`--no-proxy-exit-code`: 0) |
| 2      | USAGE: bad flags (one line on stderr; nothing was contacted) |
| 222    | SHIM_FAILURE: the agent (proxy) connection was lost and did not come back within --reconnect-timeout, or an output stream ended with an error other than EOF (output may be lost: no such container/exec id, a process the agent forgot), or WaitProcess failed, or an internal error; one line `kata-shim: ...` on stderr |

222 was picked because no container plausibly exits with it: it is not 1 (which
the original shim used, indistinguishable from a container's own failure), not
in the shell's 126-127, not 128+N for any signal N <= 64, and not 255 (`exit(-1)`).
"""

OK = 0
USAGE = 2
SHIM_FAILURE = 222
