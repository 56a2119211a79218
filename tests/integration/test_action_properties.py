"""Safety properties of the action phase over random inventories and configurations, against the emulated AWS.

Each example empties the emulator, seeds a few wasteful resources (tagged protected, managed, or neither), runs one
to three scans with a random configuration, and checks what reached AWS — on the client (``Aws.counter``) and on
the emulator (``SandboxServer.requests``):

(a) observe and dry-run send no mutating request;
(b) a resource tagged ``guard:protect=true`` (from the start, or from after the first scan) is never mutated;
(c) no scan starts more actions than ``max_actions_per_cycle`` (and all scans together no more than the hourly cap);
and nothing is mutated that some gate holds back (account/region allow-list, scope, grace, the rule's action).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import boto3
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from guard.actions.executors import ALL_EXECUTORS, EXECUTORS
from guard.audit import CANCELLED, PLANNED, STARTED, AuditLog
from guard.aws import Aws, MutationRefused, is_read_only
from guard.engine import Scanner
from guard.rule import Registry
from guard.sandbox import SandboxServer, metrics, sandbox_client
from guard.sandbox.backdate import backdate
from guard.sandbox.images import image_for
from guard.store import Store

pytestmark = pytest.mark.integration

ACCOUNT = "123456789012"
REGION = "us-east-1"
GB = 10**9
KIND_RULE = {"volume": "detached-volumes", "eip": "unattached-eips", "snapshot": "orphaned-snapshots",
             "log-group": "log-retention", "instance": "idle-vms"}
RULE_ACTIONS = {"detached-volumes": ("snapshot-then-delete",), "unattached-eips": ("release",),
                "orphaned-snapshots": ("delete",), "log-retention": ("set-retention",),
                "idle-vms": ("stop", "terminate")}
FIRST_CALLS = {executor.operations[0].split(":")[1] for executor in EXECUTORS.values()}
"""The first mutating call of each action (CreateSnapshot for snapshot-then-delete): one per action started."""
OLD = timedelta(days=40)
SESSION = boto3.Session()
"""One session for every example's Aws(): its clients are made from service models loaded once."""


@dataclass(frozen=True)
class Spec:
    kind: str
    protected: bool
    """Tagged guard:protect=true when seeded."""
    protected_later: bool
    """Tagged guard:protect=true after the first scan (a person protecting it once it was found)."""
    managed: bool
    """Tagged guard:managed=true (launched by the SDK)."""


@dataclass(frozen=True)
class Config:
    mode: str
    account_allowed: bool
    region_allowed: bool
    actions: dict[str, str]
    """rule → action ("notify" for none)."""
    act_on_unmanaged: dict[str, bool]
    grace: str
    per_cycle: int
    per_hour: int
    min_resource_age: str
    scans: int


HOLDS = ("observe", "dry-run", "dry-run", "account", "region", "grace", "no-cycle-room", "no-hour-room")
"""What may hold every action back in a case: the mode (dry-run, which plans, twice as often), the allow-list,
the grace, a cap of 0."""


def draw_case(rng: random.Random) -> tuple[list[Spec], Config]:
    """A random inventory (3–8 resources, at most 2 instances) and configuration. Half the cases have one of
    ``HOLDS`` (so each is seen), the others let actions through, up to the caps and the per-resource gates."""

    def often(common, *rare):
        return common if rng.random() < 0.6 else rng.choice(rare)

    inventory = []
    for _ in range(rng.randint(3, 8)):
        kinds = ["volume", "eip", "snapshot", "log-group"] + (
            ["instance"] if sum(spec.kind == "instance" for spec in inventory) < 2 else [])
        inventory.append(Spec(kind=rng.choice(kinds), protected=often(False, True),
                              protected_later=often(False, True), managed=often(True, False)))
    hold = rng.choice(HOLDS) if rng.random() < 0.5 else None
    config = Config(
        mode=hold if hold in ("observe", "dry-run") else "enforce", account_allowed=hold != "account",
        region_allowed=hold != "region",
        actions={rule: often(actions[-1], "notify", actions[0]) for rule, actions in RULE_ACTIONS.items()},
        act_on_unmanaged={rule: rng.random() < 0.5 for rule in RULE_ACTIONS},
        grace="24h" if hold == "grace" else "0s",
        per_cycle=0 if hold == "no-cycle-room" else rng.randint(1, 5),
        per_hour=0 if hold == "no-hour-room" else often(1000, 2, 4),
        min_resource_age=often("0s", "6h"), scans=rng.randint(1, 3))
    return inventory, config


# -- seeding --------------------------------------------------------------------------------------------------------


def _tags(spec: Spec, number: int, protect: bool | None = None) -> dict[str, str]:
    tags = {"owner": f"owner-{number}", "Name": f"{spec.kind}-{number}"}
    if spec.protected if protect is None else protect:
        tags["guard:protect"] = "true"
    if spec.managed:
        tags["guard:managed"] = "true"
    return tags


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def seed(endpoint: str, inventory: list[Spec]) -> list[tuple[Spec, str]]:
    """Create the resources, old enough for their rules; (spec, resource id) in order."""
    ec2 = sandbox_client(endpoint, "ec2", REGION)
    logs = sandbox_client(endpoint, "logs", REGION)
    now = datetime.now(timezone.utc)
    seeded: list[tuple[Spec, str]] = []
    volumes: dict[str, datetime] = {}
    snapshots: dict[str, datetime] = {}
    instances: dict[str, datetime] = {}
    groups: list[str] = []
    data: list[dict] = []
    for number, spec in enumerate(inventory):
        tags = _tag_list(_tags(spec, number))
        if spec.kind == "volume":
            resource_id = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=10 + number, VolumeType="gp3",
                                            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
            volumes[resource_id] = now - OLD
        elif spec.kind == "eip":
            resource_id = ec2.allocate_address(Domain="vpc", TagSpecifications=[
                {"ResourceType": "elastic-ip", "Tags": tags}])["AllocationId"]
        elif spec.kind == "snapshot":
            volume_id = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20, VolumeType="gp2")["VolumeId"]
            resource_id = ec2.create_snapshot(VolumeId=volume_id, Description=f"backup {number}", TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": tags}])["SnapshotId"]
            ec2.delete_volume(VolumeId=volume_id)
            snapshots[resource_id] = now - OLD
        elif spec.kind == "log-group":
            resource_id = f"/app/service-{number}"
            logs.create_log_group(logGroupName=resource_id, tags=_tags(spec, number))
            logs.create_log_stream(logGroupName=resource_id, logStreamName="main")
            groups.append(resource_id)
        else:
            resource_id = ec2.run_instances(ImageId=image_for("t3.large"), InstanceType="t3.large", MinCount=1,
                                            MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}]
                                            )["Instances"][0]["InstanceId"]
            instances[resource_id] = now - OLD
            data.extend(metrics.datums(resource_id, metrics.IDLE, metrics.timestamps(now), random.Random(number)))
        seeded.append((spec, resource_id))
    if data:
        metrics.put(endpoint, REGION, data)
    backdate(endpoint, REGION, volumes=volumes, snapshots=snapshots, instances=instances)
    if groups:
        _give_history(groups, now)
    return seeded


def _give_history(groups: list[str], now: datetime) -> None:
    """A year of never-expiring logs (5 GB) in each group, on the in-process emulator (as the sandbox seeds them)."""
    from moto.logs.models import logs_backends

    backend = logs_backends[ACCOUNT][REGION]
    for name in groups:
        group = backend.groups[name]
        group.creation_time = (now - timedelta(days=365)).replace(tzinfo=None)
        next(iter(group.streams.values())).stored_bytes += 5 * GB


def protect(endpoint: str, spec: Spec, resource_id: str) -> None:
    """Tag the resource guard:protect=true, unless the first scan removed it already."""
    if look(endpoint, spec.kind, resource_id) is None:
        return
    if spec.kind == "log-group":
        logs = sandbox_client(endpoint, "logs", REGION)
        [group] = logs.describe_log_groups(logGroupNamePrefix=resource_id)["logGroups"]
        logs.tag_resource(resourceArn=group["arn"].removesuffix(":*"), tags={"guard:protect": "true"})
    else:
        sandbox_client(endpoint, "ec2", REGION).create_tags(Resources=[resource_id],
                                                            Tags=[{"Key": "guard:protect", "Value": "true"}])


def look(endpoint: str, kind: str, resource_id: str) -> tuple | None:
    """What a mutation would change: existence, state, tags (None when gone)."""
    ec2 = sandbox_client(endpoint, "ec2", REGION)
    if kind == "volume":
        found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [resource_id]}])["Volumes"]
        return (found[0]["State"], _tag_set(found[0])) if found else None
    if kind == "eip":
        found = [a for a in ec2.describe_addresses()["Addresses"] if a["AllocationId"] == resource_id]
        return (found[0].get("AssociationId"), _tag_set(found[0])) if found else None
    if kind == "snapshot":
        found = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [resource_id]}])["Snapshots"]
        return (found[0]["State"], _tag_set(found[0])) if found else None
    if kind == "instance":
        found = [i for r in ec2.describe_instances(InstanceIds=[resource_id])["Reservations"] for i in r["Instances"]]
        return (found[0]["State"]["Name"], _tag_set(found[0])) if found else None
    logs = sandbox_client(endpoint, "logs", REGION)
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=resource_id)["logGroups"]
             if g["logGroupName"] == resource_id]
    return (found[0].get("retentionInDays"),) if found else None


def _tag_set(raw: dict) -> frozenset:
    return frozenset((t["Key"], t["Value"]) for t in raw.get("Tags", []) if t["Key"] != "guard:protect")


# -- the property ---------------------------------------------------------------------------------------------------


def settings_for(config: Config, database_url: str, registry: Registry) -> dict:
    rules = {rule: {"enabled": False} for rule in registry.rules}
    for rule, action in config.actions.items():
        rules[rule] = {"action": action, "grace": config.grace, "act_on_unmanaged": config.act_on_unmanaged[rule]}
    return {"regions": [REGION], "database_url": database_url, "mode": config.mode,
            "allowed_accounts": ACCOUNT if config.account_allowed else "210987654321",
            "allowed_regions": REGION if config.region_allowed else "us-west-2",
            "max_actions_per_cycle": config.per_cycle, "max_actions_per_hour": config.per_hour,
            "min_resource_age": config.min_resource_age, "rules": rules}


def may_change(config: Config, spec: Spec) -> bool:
    """Whether every gate but the caps lets an action on this resource through (protection aside)."""
    rule = KIND_RULE[spec.kind]
    action = config.actions[rule]
    if config.mode != "enforce" or not (config.account_allowed and config.region_allowed) or action == "notify":
        return False
    if config.grace != "0s":
        return False
    if spec.kind == "eip" and config.min_resource_age != "0s":
        return False  # AWS tells no EIP's age: the finding's first sighting (this test's first scan) stands in
    destructive = EXECUTORS["stop" if action == "terminate" else action].destructive
    return not destructive or spec.managed or config.act_on_unmanaged[rule]


def names(request, resource_id: str) -> bool:
    return any(value == resource_id for value in request.params.values())


@settings(max_examples=40, deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case_seed=st.integers(0, 2**32 - 1))
@example(case_seed=155)  # both instances stopped, then one protected: its terminate must never come
@example(case_seed=1531)  # the same with the protected one unmanaged (the rule opts in), and EIPs besides
def test_actions_stay_inside_the_gates(sandbox: SandboxServer, registry: Registry, make_settings,
                                       case_seed: int) -> None:
    """Hypothesis draws the seeds (derandomized: the same ones on every run); each seed draws a case evenly over
    ``draw_case``'s space, which forty examples of Hypothesis's own small-first generation would not cover."""
    inventory, config = draw_case(random.Random(case_seed))
    sandbox.reset()
    endpoint = sandbox.endpoint_url
    seeded = seed(endpoint, inventory)
    before = {resource_id: look(endpoint, spec.kind, resource_id) for spec, resource_id in seeded}
    with tempfile.TemporaryDirectory() as directory:
        settings = make_settings(**settings_for(config, f"sqlite:///{Path(directory) / 'guard.db'}", registry))
        aws = Aws(session=SESSION)
        scanner = Scanner(settings, registry, aws, Store(settings.database_url))
        audit = AuditLog(scanner.store)
        served, started_per_scan, first_calls_per_scan = [], [], []
        try:
            for number in range(config.scans):
                if number == 1:
                    for spec, resource_id in seeded:
                        if spec.protected_later:
                            protect(endpoint, spec, resource_id)
                sandbox.clear_requests()
                calls_before = aws.counter.by_operation()
                begun = datetime.now(timezone.utc)
                report = scanner.scan(REGION)
                ended = datetime.now(timezone.utc)
                assert report.status == "ok", report.errors
                requests = sandbox.requests()
                served.append(requests)
                calls = {op: n - calls_before.get(op, 0) for op, n in aws.counter.by_operation().items()}
                first_calls_per_scan.append(sum(n for op, n in calls.items()
                                                if op.split(":")[1] in FIRST_CALLS))
                started_per_scan.append([row for row in audit.actions() if row.status in STARTED
                                         and row.started_at is not None and begun <= row.started_at <= ended])
                # (c) the per-cycle cap, counted three ways: intents started, first calls sent, resources touched
                assert len(started_per_scan[-1]) <= config.per_cycle
                assert first_calls_per_scan[-1] == len(started_per_scan[-1])
                touched = {value for r in requests if r.mutating for key, value in r.params.items()
                           if key in ("VolumeId", "AllocationId", "SnapshotId", "InstanceId.1", "logGroupName")}
                assert len(touched) <= config.per_cycle
            rows = audit.actions()
        finally:
            scanner.store.close()

    event(f"mode {config.mode}")
    event("some action done" if any(row.status == "done" for row in rows) else "no action done")
    capped = any(started and len(started) == config.per_cycle for started in started_per_scan)
    event("a scan hit the cycle cap" if capped else "no cap reached")
    mutating_sent = [op for op in aws.counter.by_operation() if not is_read_only(op.split(":")[1])]
    mutating_served = [r for scan in served for r in scan if r.mutating]
    assert [r for scan in served for r in scan if r.status >= 400] == []
    assert sum(len(started) for started in started_per_scan) <= config.per_hour
    # (a) observe and dry-run change nothing
    if config.mode != "enforce":
        assert mutating_sent == [] and mutating_served == []
        assert all(row.status in (PLANNED, CANCELLED) for row in rows)  # cancelled: protected after it was planned
        if config.mode == "observe":
            assert rows == []
    for spec, resource_id in seeded:
        touched = [r.name for r in mutating_served if names(r, resource_id)]
        # (b) protected resources are never changed, in any mode; one protected after the first scan, from then on
        if spec.protected:
            assert touched == [] and [row for row in rows if row.resource_id == resource_id] == []
        if spec.protected_later:
            assert [r.name for scan in served[1:] for r in scan if r.mutating and names(r, resource_id)] == []
        if spec.protected or (spec.protected_later and touched == []):
            after = look(endpoint, spec.kind, resource_id)
            assert after is not None and after == before[resource_id], (spec, before[resource_id], after)
        # nothing a gate holds back is changed
        if not may_change(config, spec):
            assert touched == [], (spec, config, touched)


def test_a_mutating_call_outside_the_runner_is_refused_before_it_is_sent(sandbox: SandboxServer) -> None:
    sandbox.reset()
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    instance_id = ec2.run_instances(ImageId=image_for("t3.large"), InstanceType="t3.large", MinCount=1,
                                    MaxCount=1)["Instances"][0]["InstanceId"]
    sandbox.clear_requests()
    aws = Aws()
    with pytest.raises(MutationRefused, match="ec2:StopInstances refused"):
        aws.client("ec2", REGION).stop_instances(InstanceIds=[instance_id])
    with aws.mutating("ec2:TerminateInstances"), pytest.raises(MutationRefused):  # only the named calls
        aws.client("ec2", REGION).stop_instances(InstanceIds=[instance_id])
    assert aws.counter.by_operation() == {}
    assert [r.name for r in sandbox.requests()] == []
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    assert reservation["Instances"][0]["State"]["Name"] == "running"


# -- restarts with unfinished intents -----------------------------------------------------------------------------


class Crash(BaseException):
    """The daemon dying mid-action: not an error the action phase handles, so the intent stays unfinished."""


@dataclass(frozen=True)
class Restart:
    mode: str
    account_allowed: bool
    region_allowed: bool
    acting: bool
    """The rules still have their actions (else they only notify)."""
    approve: bool
    """A person approves every planned action before this run's scan."""
    crash: str | None
    """Where this run dies: right before its first action's call, right after it, or not at all."""


RESUMED_KINDS = ("volume", "eip", "log-group", "instance")


def restarts() -> st.SearchStrategy[list[Restart]]:
    first = st.builds(Restart, mode=st.just("enforce"), account_allowed=st.just(True), region_allowed=st.just(True),
                      acting=st.just(True), approve=st.just(False), crash=st.sampled_from(("before", "after")))
    later = st.builds(Restart, mode=st.sampled_from(("enforce", "dry-run", "observe")), account_allowed=st.booleans(),
                      region_allowed=st.booleans(), acting=st.booleans(), approve=st.booleans(),
                      crash=st.sampled_from((None, None, "before", "after")))
    return st.tuples(first, st.lists(later, min_size=1, max_size=3)).map(lambda pair: [pair[0], *pair[1]])


@contextmanager
def crashing(where: str | None):
    """Every executor dies once, at ``where``, on this run's first call."""
    if where is None:
        yield
        return
    crashed = []

    def wrap(original):
        def execute(*args, **kwargs):
            if crashed:
                return original(*args, **kwargs)
            crashed.append(True)
            if where == "before":
                raise Crash
            original(*args, **kwargs)
            raise Crash
        return execute

    with ExitStack() as stack:
        for executor in ALL_EXECUTORS.values():
            stack.enter_context(mock.patch.object(executor, "execute", wrap(executor.execute)))
        yield


@settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=restarts(), kinds=st.lists(st.sampled_from(RESUMED_KINDS), min_size=2, max_size=4))
@example(runs=[Restart("enforce", True, True, True, False, "before"), Restart("dry-run", True, True, True, False, None),
               Restart("dry-run", True, True, True, True, "before"), Restart("dry-run", True, True, True, False, None)],
         kinds=["eip", "volume", "instance"])  # planned, approved by a person, died mid-call: finished in dry-run
def test_restarts_never_send_a_mutating_call_todays_gates_forbid(sandbox: SandboxServer, registry: Registry,
                                                                 make_settings, runs: list[Restart],
                                                                 kinds: list[str]) -> None:
    """Any sequence of enforce/dry-run/observe restarts, each possibly dying mid-action, over unfinished intents:
    a mutating call goes out only when the run's own gates allow it (enforce, or dry-run for an action a person
    approved; inside the allow-lists; the rule still acting), and no action's first call is ever sent twice."""
    sandbox.reset()
    endpoint = sandbox.endpoint_url
    seeded = seed(endpoint, [Spec(kind, protected=False, protected_later=False, managed=True) for kind in kinds])
    first_calls: Counter = Counter()
    with tempfile.TemporaryDirectory() as directory:
        database_url = f"sqlite:///{Path(directory) / 'guard.db'}"
        for run in runs:
            config = Config(mode=run.mode, account_allowed=run.account_allowed, region_allowed=run.region_allowed,
                            actions={rule: actions[0] if run.acting else "notify"
                                     for rule, actions in RULE_ACTIONS.items()},
                            act_on_unmanaged={rule: False for rule in RULE_ACTIONS}, grace="0s", per_cycle=100,
                            per_hour=1000, min_resource_age="0s", scans=1)
            values = settings_for(config, database_url, registry)
            if run.mode != "enforce" and not run.account_allowed:
                values["allowed_accounts"] = ""  # outside enforce mode the list may be empty
            scanner = Scanner(make_settings(**values), registry, Aws(session=SESSION), Store(database_url))
            audit = AuditLog(scanner.store)
            try:
                if run.approve:
                    for row in audit.actions(status=PLANNED):
                        audit.approve(row.id, "alice", datetime.now(timezone.utc))
                approved = {row.resource_id for row in audit.actions() if row.approved_at is not None}
                sandbox.clear_requests()
                with crashing(run.crash), contextlib.suppress(Crash):
                    scanner.scan(REGION)
                mutated = {resource_id for request in sandbox.requests() if request.mutating
                           for _, resource_id in seeded if names(request, resource_id)}
                allowed = run.mode != "observe" and run.account_allowed and run.region_allowed and run.acting
                if not allowed:
                    assert mutated == set(), (run, mutated)
                elif run.mode == "dry-run":
                    assert mutated <= approved, (run, mutated, approved)
                for request in sandbox.requests():
                    if request.mutating and request.operation in FIRST_CALLS:
                        first_calls.update(resource_id for _, resource_id in seeded if names(request, resource_id))
                event(f"{run.mode}: {'changed something' if mutated else 'changed nothing'}")
                if any(row.status == CANCELLED and "not carried out" in (row.error or "") for row in audit.actions()):
                    event("an unfinished intent was cancelled")
            finally:
                scanner.store.close()
    assert all(count == 1 for count in first_calls.values()), first_calls
