"""The ``vmguard`` command line (also ``python -m sdk``): run a script on a guarded VM.

    vmguard run --vm-type m7g.large --region us-west-2 -- python train.py

launches a cluster (``sdk.Cluster``: priced and capped first, this Python environment replicated, registered with
the daemon and heartbeated, its VMs ending themselves after ``--keepalive`` if this process dies), runs the command
on its worker with the working directory's code (``sdk.command``), prints the command's output as it comes, shuts
the cluster down and exits with the command's exit code. A wrong option is one line and exit code 2; a launch that
fails is one line and exit code 1; Ctrl-C shuts the cluster down and exits 130.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from sdk.errors import SdkError

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
_UsageError = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError")
"""click's UsageError (a bad or missing option), from whichever copy of click typer runs on."""

app = typer.Typer(help="vmguard: run your code on guarded AWS VMs.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, add_completion=False)
err = Console(stderr=True)


class _Failed(Exception):
    """A one-line failure and the exit code it ends the process with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@app.callback()
def _commands() -> None:
    """vmguard: run your code on guarded AWS VMs."""


def _pairs(values: list[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a one-line usage error for any other shape."""
    pairs: dict[str, str] = {}
    for value in values:
        key, equals, text = value.partition("=")
        if not equals or not key:
            raise _Failed(f"{option} {value!r} must be KEY=VALUE", EXIT_USAGE)
        pairs[key] = text
    return pairs


def cluster_kwargs(**options: Any) -> dict[str, Any]:
    """The ``sdk.Cluster`` arguments of the options given (the others keep the SDK's defaults)."""
    kwargs = {name: value for name, value in options.items() if value not in (None, [], ())}
    for name in ("vm_type", "region"):
        if name in kwargs and len(kwargs[name]) == 1:
            kwargs[name] = kwargs[name][0]
    if "environ" in kwargs:
        kwargs["environ"] = _pairs(kwargs["environ"], "--env")
    if "tags" in kwargs:
        kwargs["tags"] = _pairs(kwargs["tags"], "--tag")
    return kwargs


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: list[str] = typer.Argument(..., help="the command to run on the VM, after -- (e.g. python train.py)"),
    vm_type: list[str] = typer.Option(None, "--vm-type", help="instance type; repeat for fallbacks"),
    region: list[str] = typer.Option(None, "--region", help="region; repeat for fallbacks when one has no capacity"),
    n_workers: int = typer.Option(1, "--n-workers", help="workers; the command runs on one of them"),
    cpu: int = typer.Option(None, "--cpu", help="vCPUs per VM (instead of --vm-type)"),
    memory: str = typer.Option(None, "--memory", help="memory per VM, at least, e.g. 16GiB (instead of --vm-type)"),
    arm: bool = typer.Option(None, "--arm/--x86", help="Graviton (arm64) or x86_64"),
    keepalive: str = typer.Option(None, "--keepalive", help="end the VMs this long after this process is gone"),
    idle_timeout: str = typer.Option(None, "--idle-timeout", help="end the VMs when nothing ran this long"),
    max_lifetime: str = typer.Option(None, "--max-lifetime", help="a hard cap on the VMs' lifetime"),
    max_hourly_usd: float = typer.Option(None, "--max-hourly-usd", help="refuse a launch estimated above this"),
    spot_policy: str = typer.Option(None, "--spot-policy", help="on-demand, spot or spot_with_fallback"),
    disk_size: int = typer.Option(None, "--disk-size", help="GiB of root volume per VM"),
    threads_per_worker: int = typer.Option(None, "--threads-per-worker", help="Dask threads per worker"),
    worker_memory: str = typer.Option(None, "--worker-memory", help="memory a worker may use, e.g. 12GiB"),
    environ: list[str] = typer.Option(None, "--env", help="KEY=VALUE set for the command; repeatable"),
    tags: list[str] = typer.Option(None, "--tag", help="KEY=VALUE tag on every resource; repeatable"),
    environment: bool = typer.Option(None, "--environment/--no-environment",
                                     help="replicate this Python environment on the VMs (default: yes)"),
) -> None:
    """Run a command on a guarded VM with this environment and the working directory's code; stream its output;
    exit with its exit code. The VMs are shut down when it ends."""
    from sdk.command import run_command, workdir_files
    from sdk.spec import ClusterSpec

    kwargs = cluster_kwargs(vm_type=vm_type, region=region, n_workers=n_workers, cpu=cpu, memory=memory, arm=arm,
                            keepalive=keepalive, idle_timeout=idle_timeout, max_lifetime=max_lifetime,
                            max_hourly_usd=max_hourly_usd, spot_policy=spot_policy, disk_size=disk_size,
                            threads_per_worker=threads_per_worker, worker_memory=worker_memory, environ=environ,
                            tags=tags, environment=environment)
    if n_workers < 1:
        raise _Failed(f"--n-workers {n_workers}: the command runs on a worker; pass at least 1", EXIT_USAGE)
    try:
        ClusterSpec.from_kwargs(**kwargs)  # every option checked before anything is captured or launched
        files = workdir_files(Path.cwd())
    except SdkError as exc:
        raise _Failed(str(exc), EXIT_USAGE) from None
    from sdk.cluster import Cluster

    try:
        with Cluster(console=err, **kwargs) as cluster:
            code = run_command(cluster, command, files)
    except SdkError as exc:
        raise _Failed(str(exc), EXIT_FAILED) from None
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; its exit code (usage errors on one line, not in a box)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        app(args=["--help"], prog_name="vmguard", standalone_mode=False)
        return EXIT_USAGE
    try:
        result = app(args=args, prog_name="vmguard", standalone_mode=False)
    except _UsageError as exc:
        err.print(f"[red]vmguard: error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except _Failed as exc:
        err.print(f"[red]vmguard: error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.code
    except (KeyboardInterrupt, typer.Abort):
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
