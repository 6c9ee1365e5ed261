"""`kata-runtime factory init|status|destroy`: the VM cache (Kata 1.x's `factory` commands).

``init`` runs the cache server in the foreground (kata_runtime.vmcache.CacheServer) with the
configuration's ``[factory] vm_cache_number`` and ``vm_cache_endpoint``: one line on stdout
once it serves, one when it stopped; SIGTERM or SIGINT (ctrl-c) stop it, and so does
``destroy``. ``status`` prints the server's pid and the sandboxes it holds ready (exit 1 when
none serves). ``destroy`` asks the server to stop and waits until its process is gone (it
stops the sandboxes it holds after it stopped listening); without a server it stops what a
killed one left. A configuration without the cache is an error (exit 1).
"""

from __future__ import annotations

import time

import click

#: Seconds ``destroy`` waits for the server to stop its sandboxes and go (its open leases,
#: at most 60 s, included).
DESTROY_TIMEOUT = 120.0


def _cache_config(globs):
    """(config, number, endpoint) of the VM cache; ClickException when it is off."""
    config = globs.config()
    factory = config.values["factory"]
    if not factory["vm_cache_number"]:
        raise click.ClickException(f"VM cache is not enabled: set [factory] vm_cache_number > 0 in {config.path}")
    return config, factory["vm_cache_number"], factory["vm_cache_endpoint"]


@click.group(name="factory", help="The VM cache: sandboxes started ahead of time for faster creates.")
def command():
    pass


@command.command(name="init", short_help="Start the VM cache server (foreground).",
                 help="Serve the VM cache in the foreground: it listens once its first sandbox is up "
                      "(`factory status` answers then); ctrl-c or `factory destroy` stops it.")
@click.option("--lease", type=click.FloatRange(min=5, max=60), default=None, metavar="SECONDS",
              help="How long a handed-out sandbox may stay unclaimed by its taker before the server stops "
                   "it (5-60, default 30).")
@click.pass_obj
def init(globs, lease: float | None) -> None:
    from kata_runtime import log as klog
    from kata_runtime.vmcache import LEASE, CacheError, CacheServer

    config, number, endpoint = _cache_config(globs)
    server = CacheServer(config, number, endpoint, globs.root, klog.current(), say=lambda line: click.echo(line),
                         lease=lease or LEASE)
    try:
        server.run()
    except CacheError as e:
        raise click.ClickException(str(e)) from None


@command.command(name="status", help="Show the VM cache server and the sandboxes it holds ready.")
@click.pass_obj
def status(globs) -> None:
    from kata_runtime import vmcache

    _, number, endpoint = _cache_config(globs)
    try:
        got = vmcache.status(endpoint)
    except vmcache.CacheError as e:
        if vmcache.locked(endpoint):
            raise click.ClickException(f"the VM cache server on {endpoint} is starting its first sandbox") from None
        raise click.ClickException(f"{e}: start one with `kata-runtime factory init`") from None
    click.echo(f"VM cache server pid {got['pid']} on {endpoint}: {len(got['ready'])} of {number} "
               f"sandboxes ready")
    for vm in got["ready"]:
        click.echo(f"  sandbox pid {vm['pid']}" + (f": {vm['cpu']} vCPU, {vm['memory']} MiB" if vm["memory"] else ""))


@command.command(name="destroy", help="Stop the VM cache server and the sandboxes it holds ready.")
@click.pass_obj
def destroy(globs) -> None:
    from kata_runtime import log as klog
    from kata_runtime import vmcache

    from kata_runtime.procs import pid_alive

    _, _, endpoint = _cache_config(globs)
    try:
        server = vmcache.status(endpoint)["pid"]
    except vmcache.CacheError:
        server = None  # none serves: what a killed one left is cleaned below
        if vmcache.serving(endpoint):
            raise click.ClickException(f"the VM cache server on {endpoint} does not answer") from None
        if vmcache.locked(endpoint):
            raise click.ClickException(f"the VM cache server on {endpoint} is still starting its first sandbox; "
                                       "try again once `factory status` answers") from None
    if server is not None:
        try:
            vmcache.quit_server(endpoint)
        except vmcache.CacheError:
            pass  # it may have quit before its answer reached us: its process says
    # Gone, not only its socket: it stops the sandboxes it holds after it stopped listening.
    deadline = time.monotonic() + DESTROY_TIMEOUT
    while server is not None and pid_alive(server):
        if time.monotonic() > deadline:
            raise click.ClickException(f"the VM cache server on {endpoint} (pid {server}) did not stop within "
                                       f"{DESTROY_TIMEOUT:g} s")
        time.sleep(0.05)
    cleaned, leased = vmcache.clean_leftovers(globs.root, klog.current())
    for sandbox_id in cleaned:
        click.echo(f"stopped sandbox {sandbox_id}, left by a VM cache server that was killed")
    vmcache.wait_leases(globs.root, leased, klog.current())  # handed out just before it was killed
    if server is None and not cleaned and not leased:
        click.echo(f"no VM cache server on {endpoint}: nothing to destroy")
        return
    click.echo("vm factory destroyed")  # Kata 1.x's words
