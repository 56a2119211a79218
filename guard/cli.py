"""The ``guard`` command line: demo, run, scan, findings, check-config, rules."""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import secrets
import shlex
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from guard.aws import Aws
from guard.docs import rules_markdown
from guard.engine import Scanner, ScanReport
from guard.lease import Lease
from guard.render import findings_json, print_findings
from guard.rule import Registry, discover_rules, rule_doc, thresholds_doc
from guard.settings import ConfigError, Settings, load_settings
from guard.store import Store, StoreError, scope_of

SDK_ENV_FILE = ".vmguard-sandbox.env"
"""Where `guard demo` writes the environment that points the SDK at its sandbox (removed when it stops)."""

app = typer.Typer(help="vmguard: find and price the waste in an AWS account.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, add_completion=False)
console = Console()
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"


class State(str, Enum):
    open = "open"
    resolved = "resolved"
    all = "all"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]guard: error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _registry() -> Registry:
    registry = discover_rules()
    for name, error in registry.errors.items():
        err.print(f"[yellow]guard: warning:[/yellow] rule plugin {escape(repr(name))} not loaded: {escape(error)}",
                  soft_wrap=True, highlight=False)
    return registry


def _store(settings: Settings) -> Store:
    try:
        return Store(settings.database_url, scope_of(settings))
    except StoreError as exc:
        raise _fail(str(exc)) from None


def _settings(registry: Registry, **overrides: Any) -> Settings:
    try:
        return load_settings(registry, **overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("botocore", "boto3", "urllib3", "apscheduler", "werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _scan_all(scanner: Scanner, regions: list[str]) -> list[ScanReport]:
    """Scan each region, showing progress when stderr is a terminal."""
    reports = []
    with err.status("scanning…") as status:
        for region in regions:
            reports.append(scanner.scan(region, progress=lambda r, text: status.update(f"{r}: {text}")))
    for report in reports:
        for error in report.errors:
            err.print(f"[yellow]{report.region}: {escape(error['source'])}: {escape(error['error'])}[/yellow]",
                      soft_wrap=True, highlight=False)
    return reports


def _open_findings(store: Store, regions: list[str]) -> list[dict[str, Any]]:
    return [row.as_dict() for row in store.findings(state="open") if row.region in regions]


@app.command()
def demo(
    once: bool = typer.Option(False, "--once", help="scan once, print the findings and exit"),
    listen: str = typer.Option(None, help="host:port for /metrics and the API (default from settings)"),
    output: Format = typer.Option(Format.table, "--format", help="findings as a table or JSON"),
    sdk_env: Path = typer.Option(Path(SDK_ENV_FILE), "--sdk-env", help=(
        "where to write the environment that points the SDK at this sandbox and its daemon (`source` it)")),
) -> None:
    """Seed an emulated team account full of waste, run the daemon on it, and show what it finds.

    Until Ctrl-C, the SDK can launch clusters in the sandbox: each VM is a local process on its own loopback
    address, guarded by this daemon. `source` the file named by --sdk-env in another shell to use it.
    """
    try:
        from guard.sandbox import LiveMetrics, SandboxServer, VmRunner, create_env_location, seed_team_account
    except ModuleNotFoundError as exc:
        raise _fail(f"guard demo needs the emulator ({exc.name}): pip install 'vmguard[sandbox]'") from None

    registry = _registry()
    started = time.perf_counter()
    with err.status("starting the sandbox account (emulated AWS on loopback)…"):
        server = SandboxServer()
        server.start()
        server.apply_env()
        truth = seed_team_account(server.endpoint_url)
    regions = sorted(truth.regions)
    workdir = Path(tempfile.mkdtemp(prefix="vmguard-demo-"))
    owner_token = secrets.token_urlsafe(24)
    overrides: dict[str, Any] = {"regions": regions, "database_url": f"sqlite:///{workdir / 'guard.db'}",
                                 "mode": "observe", "api_tokens": {getpass.getuser(): owner_token}}
    if listen:
        overrides["listen"] = listen
    settings = _settings(registry, **overrides)
    err.print(f"sandbox account seeded at {server.endpoint_url} in {time.perf_counter() - started:.1f}s "
              f"({', '.join(regions)})")
    try:
        if once:
            store = _store(settings)
            _scan_all(Scanner(settings, registry, Aws(), store), regions)
            raise typer.Exit(_show_demo_result(store, regions, truth, output))
        from guard.daemon import Daemon

        _logging(verbose=False)
        try:
            daemon = Daemon(settings, registry)
            daemon.check_listen()
        except (StoreError, ConfigError) as exc:
            raise _fail(str(exc)) from None
        live = LiveMetrics(server.endpoint_url, truth).start()
        _scan_all(daemon.scanner, regions)
        _show_demo_result(daemon.store, regions, truth, output)
        vms = VmRunner(server.endpoint_url, log_dir=workdir / "vms").start()
        _write_sdk_env(sdk_env, server.env | {"VMGUARD_DAEMON_URL": daemon.url,
                                              "VMGUARD_TOKEN": owner_token, "VMGUARD_OWNER": getpass.getuser(),
                                              "VMGUARD_ENV_S3": create_env_location(server.endpoint_url)})
        err.print(f"\nserving {daemon.url}/metrics and /v1/findings (token: {daemon.api_token}); "
                  f"rescanning every {int(settings.scan_interval.total_seconds())}s — Ctrl-C stops\n"
                  f"SDK: `source {sdk_env}` in another shell, then launch clusters here (VM logs: {workdir / 'vms'})",
                  highlight=False, soft_wrap=True)
        daemon.start_scheduler(first_scan_now=False)
        try:
            daemon.serve()
        finally:
            vms.stop()
            live.stop()
            sdk_env.unlink(missing_ok=True)
    finally:
        server.stop()


def _write_sdk_env(path: Path, values: dict[str, str]) -> None:
    """A shell file of ``export NAME='value'`` lines, readable only by this user (it holds the API token)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(values.items())))


def _show_demo_result(store: Store, regions: list[str], truth: Any, output: Format) -> int:
    findings = _open_findings(store, regions)
    if output is Format.json:
        console.print_json(findings_json(findings)) if console.is_terminal else print(findings_json(findings))
    else:
        print_findings(console, findings, title="sandbox account")
    found = {(f["rule"], f["region"], f["resource_id"]): f["waste_hourly_usd"] for f in findings}
    expected = {key: e.waste_hourly_usd for key, e in truth.expected().items()}
    # relative, and loose enough for minutes: what a log-retention policy would free moves with the log group's age
    # (a few parts per million per 10 s for a two-month-old group), and a loaded machine seeds slowly
    same_prices = all(
        (found[key] is None and value is None)
        or (found[key] is not None and value is not None and math.isclose(found[key], value, rel_tol=1e-4))
        for key, value in expected.items() if key in found
    )
    if found.keys() == expected.keys() and same_prices:
        err.print(f"[green]matches the sandbox's ground truth: {len(expected)} findings, same resources, "
                  "same dollars[/green]")
        return 0
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    err.print(f"[red]differs from the sandbox's ground truth: missing {missing}, unexpected {extra}[/red]")
    return 1


@app.command()
def run(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    """Run the daemon per settings: scan every region on schedule and serve /metrics and the API."""
    from guard.daemon import Daemon

    registry = _registry()
    settings = _settings(registry)
    _logging(verbose)
    try:
        daemon = Daemon(settings, registry)
        daemon.check_listen()
    except (StoreError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    if daemon.token_stored:
        made = "generated now" if daemon.token_generated else "generated on its first start"
        err.print(f"GUARD_API_TOKEN is not set; the API token ({made}, kept in the database, the same after a "
                  f"restart) is {daemon.api_token}")
    err.print(f"vmguard {settings.mode} mode: scanning {', '.join(settings.regions)} every "
              f"{int(settings.scan_interval.total_seconds())}s; serving {daemon.url}/metrics",
              highlight=False, soft_wrap=True)
    _describe_actions(settings)
    daemon.start_scheduler()
    daemon.serve()


def _describe_actions(settings: Settings) -> None:
    """One line on what the daemon will do about findings, so a mode/action mismatch is seen at start."""
    from guard.durations import format_duration

    configured = [f"{rule_id} → {config.action} after {format_duration(config.grace)}"
                  for rule_id, config in settings.rule_configs.items() if config.enabled and config.action != "notify"]
    if not configured:
        return
    if settings.mode == "observe":
        err.print(f"actions configured ({'; '.join(configured)}) but mode is observe: nothing will be changed; "
                  "set GUARD_MODE=dry-run to see what would be done", highlight=False, soft_wrap=True)
        return
    verb = "planning (dry-run)" if settings.mode == "dry-run" else "acting"
    accounts = (f"accounts {', '.join(settings.allowed_accounts)}" if settings.allowed_accounts else
                "no allowed_accounts yet, so approved actions are held back")
    err.print(f"{verb}: {'; '.join(configured)}; at most {settings.max_actions_per_cycle} per scan and "
              f"{settings.max_actions_per_hour} per hour; {accounts}; regions {', '.join(settings.action_regions)}",
              highlight=False, soft_wrap=True)


@app.command()
def scan(
    once: bool = typer.Option(False, "--once", help="scan once and exit (otherwise repeat every scan_interval)"),
    output: Format = typer.Option(Format.table, "--format"),
    region: list[str] = typer.Option(None, "--region", help="scan only this region (repeatable)"),
) -> None:
    """Scan the configured regions in the foreground and print the open findings."""
    registry = _registry()
    settings = _settings(registry, **({"regions": region} if region else {}))
    store = _store(settings)
    scanner = Scanner(settings, registry, Aws(), store)
    lease = Lease(store, settings.lease_ttl)
    lease.start()
    scanner.acts = scanner.actuator.may_act = lease.held
    if not lease.held():
        err.print(f"another process ({lease.current_holder() or 'a daemon'}) acts on this database: this scan "
                  "writes and changes nothing; the findings shown are the ones that process keeps")
    try:
        while True:
            reports = _scan_all(scanner, settings.regions)
            findings = _open_findings(store, settings.regions)
            if output is Format.json:
                print(findings_json(findings))
            else:
                print_findings(console, findings)
            if once:
                raise typer.Exit(0 if all(r.status == "ok" for r in reports) else 1)
            time.sleep(settings.scan_interval.total_seconds())
    finally:
        lease.release()


@app.command()
def findings(
    state: State = typer.Option(State.open, "--state"),
    output: Format = typer.Option(Format.table, "--format"),
    rule: str = typer.Option(None, "--rule", help="only this rule"),
    region: str = typer.Option(None, "--region", help="only this region"),
) -> None:
    """List the findings kept in the store."""
    registry = _registry()
    settings = _settings(registry)
    if rule and rule not in registry.rules:
        raise _fail(f"--rule {rule!r}: unknown rule id; known rules: {', '.join(registry.rules)}")
    rows = [r.as_dict() for r in _store(settings).findings(state=state.value, rule=rule, region=region)]
    if output is Format.json:
        print(findings_json(rows))
    else:
        print_findings(console, rows, title=f"{state.value} findings")


@app.command("check-config")
def check_config() -> None:
    """Print the effective configuration (secrets masked); exit 2 with one line if a value is wrong."""
    registry = _registry()
    settings = _settings(registry)
    console.print_json(json.dumps(settings.masked())) if console.is_terminal else print(
        json.dumps(settings.masked(), indent=2))


class PolicyMode(str, Enum):
    observe = "observe"
    dry_run = "dry-run"
    enforce = "enforce"


@app.command("iam-policy")
def iam_policy(mode: PolicyMode = typer.Option(
        PolicyMode.observe, "--mode", help=("observe/dry-run: read-only, plus terminating expired SDK clusters "
                                            "(enforce_keepalive); enforce: plus the enabled actions")),
        sdk: bool = typer.Option(False, "--sdk", help=("instead, the policy of a data scientist launching clusters "
                                                       "with the SDK (its S3 statements narrowed to "
                                                       "$VMGUARD_ENV_S3 when set)"))) -> None:
    """Print the least-privilege IAM policy for the enabled rules (and, for enforce, their configured actions)."""
    from guard.iam import enforce_policy, observe_policy, render

    if sdk:
        from sdk.errors import SdkError
        from sdk.permissions import sdk_policy

        try:
            print(render(sdk_policy(os.environ.get("VMGUARD_ENV_S3") or None)))
        except SdkError as exc:
            raise _fail(f"VMGUARD_ENV_S3: {exc}") from None
        return
    registry = _registry()
    settings = _settings(registry)
    rules = [registry.rules[rule_id](settings.rule_configs[rule_id]) for rule_id in settings.enabled_rules()]
    if mode is PolicyMode.enforce:
        print(render(enforce_policy(rules, settings.managed_tag_pair, settings.protect_tag_pair,
                                    keepalive=settings.enforce_keepalive)))
    else:
        print(render(observe_policy(rules, keepalive=settings.enforce_keepalive, managed_tag=settings.managed_tag_pair,
                                    protect_tag=settings.protect_tag_pair)))


actions_app = typer.Typer(help="The actions the daemon planned or took (its audit trail); approve planned ones.",
                          no_args_is_help=True)
app.add_typer(actions_app, name="actions")


def _audit(settings: Settings):
    from guard.audit import AuditLog

    return AuditLog(_store(settings))


@actions_app.command("list")
def actions_list(
    status: str = typer.Option(None, "--status", help="only this status, e.g. would-do, done, failed"),
    rule: str = typer.Option(None, "--rule", help="only this rule"),
    region: str = typer.Option(None, "--region", help="only this region"),
    limit: int = typer.Option(100, "--limit", min=1, help="at most this many, newest first"),
    output: Format = typer.Option(Format.table, "--format"),
) -> None:
    """List actions, newest first."""
    from guard.audit import STATUSES

    if status and status not in STATUSES:
        raise _fail(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
    settings = _settings(_registry())
    rows = [row.as_dict() for row in _audit(settings).actions(status=status, rule=rule, region=region, limit=limit)]
    if output is Format.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no actions" + (f" with status {status}" if status else "") + ".")
        return
    from rich.table import Table

    table = Table("id", "status", "action", "rule", "region", "resource", "owner", "$/hour", "when", "by",
                  title="actions")
    for row in rows:
        hourly = row["waste_hourly_usd"]
        table.add_row(str(row["id"]), row["status"], row["action"], row["rule"], row["region"], row["resource_id"],
                      row["owner"], f"{hourly:,.4f}" if hourly is not None else "?",
                      (row["finished_at"] or row["started_at"] or row["planned_at"])[:19].replace("T", " "),
                      row["approved_by"] or "")
    console.print(table)


@actions_app.command("show")
def actions_show(action_id: int = typer.Argument(..., help="the action's id (from `guard actions list`)")) -> None:
    """Everything recorded about one action, as JSON."""
    row = _audit(_settings(_registry())).get(action_id)
    if row is None:
        raise _fail(f"action {action_id}: no such action; `guard actions list` shows them", code=1)
    print(json.dumps(row.as_dict(), indent=2))


@actions_app.command("approve")
def actions_approve(
    action_id: int = typer.Argument(..., help="the planned (would-do) action to carry out"),
    by: str = typer.Option(None, "--by", help="who approves (default: your user name)"),
) -> None:
    """Approve one planned action: the daemon carries it out at its region's next scan, through every gate."""
    import getpass
    from datetime import datetime, timezone

    from guard.audit import ApprovalError

    settings = _settings(_registry())
    try:
        row = _audit(settings).approve(action_id, by=f"cli:{by or getpass.getuser()}", now=datetime.now(timezone.utc))
    except ApprovalError as exc:
        raise _fail(str(exc), code=1) from None
    err.print(f"approved action {row.id}: {row.action} {row.resource_id} in {row.region}; it runs at the next scan "
              f"of {row.region} (within {int(settings.scan_interval.total_seconds())}s when the daemon runs), "
              "after the gates are checked again", highlight=False, soft_wrap=True)


@app.command("rules")
def list_rules(output: str = typer.Option("table", "--format", help="table or markdown (the README block)")) -> None:
    """The rules installed, with what they detect and their thresholds."""
    registry = _registry()
    if output == "markdown":
        print(rules_markdown(registry))
        return
    if output != "table":
        raise _fail(f"--format {output!r}: expected 'table' or 'markdown'")
    from rich.table import Table

    table = Table("rule", "what it detects", "thresholds (defaults)", "suggested action")
    for rule_id, cls in registry.rules.items():
        table.add_row(rule_id, rule_doc(cls)["summary"], thresholds_doc(cls, markdown=False), cls.suggested_action)
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
