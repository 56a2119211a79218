"""The enforce-mode IAM policy allows every call the actions make (as recorded by the call counter), on the resources
they make them on, only where the gates let them act; and it denies every change to a protected resource."""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase

import pytest
from typer.testing import CliRunner

from guard.actions.executors import EXECUTORS
from guard.audit import DONE, ActionRow, AuditLog
from guard.aws import Aws, is_read_only
from guard.cli import app
from guard.engine import Scanner
from guard.iam import NO_PERMISSION_NEEDED, enforce_policy, iam_action
from guard.model import Snapshot
from guard.sandbox import GroundTruth, SandboxServer, sandbox_client
from guard.settings import Settings
from guard.store import Store

ACCOUNT = "123456789012"
REGIONS = ("us-east-1", "us-west-2")
EVERY_ACTION = {
    "idle-vms": "terminate",
    "idle-gpu": "stop",
    "detached-volumes": "snapshot-then-delete",
    "unattached-eips": "release",
    "log-retention": "set-retention",
    "orphaned-snapshots": "delete",
}
MANAGED = ("guard:managed", "true")
PROTECT = ("guard:protect", "true")

# -- a small evaluator of the statements enforce_policy writes ------------------------------------------------------

Request = tuple[str, str, Mapping[str, str]]
"""(IAM action, resource ARN, request context) — one authorisation AWS makes for a call."""


def _listed(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def _conditions_hold(condition: Mapping[str, Mapping[str, str | list[str]]], context: Mapping[str, str]) -> bool:
    for operator, pairs in condition.items():
        for key, expected in pairs.items():
            values = _listed(expected)
            if operator == "Null":  # "false": the key must be present
                held = (key not in context) == (values[0] == "true")
            elif operator == "StringEquals":
                held = context.get(key) in values
            elif operator == "StringEqualsIgnoreCase":
                held = key in context and context[key].lower() in {v.lower() for v in values}
            elif operator == "StringLike":
                held = key in context and any(fnmatchcase(context[key], pattern) for pattern in values)
            else:
                raise AssertionError(f"the policy uses {operator}, which this test cannot evaluate")
            if not held:
                return False
    return True


def _applies(statement: Mapping, request: Request) -> bool:
    action, resource, context = request
    return (any(fnmatchcase(action.lower(), pattern.lower()) for pattern in _listed(statement["Action"]))
            and any(fnmatchcase(resource, pattern) for pattern in _listed(statement["Resource"]))
            and _conditions_hold(statement.get("Condition", {}), context))


def allowed(policy: Mapping, *requests: Request) -> bool:
    """A call is allowed when each of its authorisations is: some Allow applies and no Deny does."""
    statements = policy["Statement"]
    return all(not any(s["Effect"] == "Deny" and _applies(s, r) for s in statements)
               and any(s["Effect"] == "Allow" and _applies(s, r) for s in statements) for r in requests)


# -- what each action's calls ask AWS to authorise ------------------------------------------------------------------


def resource_tags(snapshot: Snapshot) -> dict[str, Mapping[str, str]]:
    """Tags of every resource an action may act on, as the scan saw them (before the action)."""
    tagged = {}
    for part, ident in (("instances", "id"), ("volumes", "id"), ("addresses", "allocation_id"),
                        ("log_groups", "name"), ("snapshots", "id")):
        for resource in getattr(snapshot, part) or ():
            tagged[getattr(resource, ident)] = resource.tags
    return tagged


def calls(row: ActionRow, tags: Mapping[str, str], endpoint: str) -> dict[str, list[Request]]:
    """IAM action → the authorisations of the call an action row made on its resource (which carried ``tags``)."""
    on_resource = {f"aws:ResourceTag/{key}": value for key, value in tags.items()}
    region, resource_id = row.region, row.resource_id
    arn = {
        "instance": f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{resource_id}",
        "volume": f"arn:aws:ec2:{region}:{ACCOUNT}:volume/{resource_id}",
        "elastic-ip": f"arn:aws:ec2:{region}:{ACCOUNT}:elastic-ip/{resource_id}",
        "log-group": f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{resource_id}",
        "snapshot": f"arn:aws:ec2:{region}::snapshot/{resource_id}",
    }[row.resource_type]
    if row.action != "snapshot-then-delete":
        [operation] = EXECUTORS[row.action].operations
        return {iam_action(*operation.split(":", 1)): [(operation, arn, on_resource)]}
    # CreateSnapshot is authorised on the volume and on the new snapshot (with the tags it is created with), the
    # tags once more as CreateTags by way of CreateSnapshot; DeleteVolume on the volume
    snapshot_id = row.detail["snapshot_id"]
    [snapshot] = sandbox_client(endpoint, "ec2", region).describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    requested = {f"aws:RequestTag/{t['Key']}": t["Value"] for t in snapshot["Tags"]}
    snapshot_arn = f"arn:aws:ec2:{region}::snapshot/{snapshot_id}"
    return {
        "ec2:CreateSnapshot": [("ec2:CreateSnapshot", arn, on_resource),
                               ("ec2:CreateSnapshot", snapshot_arn, requested),
                               ("ec2:CreateTags", snapshot_arn, requested | {"ec2:CreateAction": "CreateSnapshot"})],
        "ec2:DeleteVolume": [("ec2:DeleteVolume", arn, on_resource)],
    }


# -- scans ------------------------------------------------------------------------------------------------------------


def enforcing(registry, make_settings, act_on_unmanaged: bool, regions=REGIONS,
              act_on_instance_store: bool = True) -> Scanner:
    """Every action configured; the instance rules opt in to instance-store types (the GPU boxes) by default, for the
    widest footprint."""
    rules = {rule_id: {"action": action, "grace": "0s", "act_on_unmanaged": act_on_unmanaged}
             for rule_id, action in EVERY_ACTION.items()}
    for rule_id in ("idle-vms", "idle-gpu"):
        rules[rule_id]["act_on_instance_store"] = act_on_instance_store
    settings: Settings = make_settings(regions=list(regions), mode="enforce", allowed_accounts=ACCOUNT,
                                       min_resource_age="0s", max_actions_per_cycle=100,
                                       max_actions_per_hour=1000, rules=rules)
    return Scanner(settings, registry, Aws(), Store(settings.database_url))


def scan_until_settled(scanner: Scanner, regions=REGIONS, rounds: int = 2) -> dict[str, Mapping[str, str]]:
    """Scan every region ``rounds`` times (stop, then terminate…); the tags of what the first scans saw."""
    tags: dict[str, Mapping[str, str]] = {}
    for _ in range(rounds):
        for region in regions:
            report = scanner.scan(region)
            assert report.status == "ok", report.errors
            assert not report.actions.failed, report.actions.failed
            tags = resource_tags(report.snapshot) | tags
    return tags


def policy_of(scanner: Scanner) -> dict:
    return enforce_policy(scanner.rules, scanner.settings.managed_tag_pair, scanner.settings.protect_tag_pair)


def mutating(scanner: Scanner) -> dict[str, int]:
    return {iam_action(*op.split(":", 1)): n for op, n in scanner.aws.counter.by_operation().items()
            if not is_read_only(op.split(":", 1)[1])}


def called_rows(scanner: Scanner) -> list[ActionRow]:
    """Actions done by calling AWS (not found done already)."""
    return [row for row in AuditLog(scanner.store).actions(status=DONE) if row.detail.get("called")]


def test_the_enforce_policy_allows_every_call_the_actions_made(team_account: GroundTruth, sandbox: SandboxServer,
                                                               registry, make_settings) -> None:
    scanner = enforcing(registry, make_settings, act_on_unmanaged=True)
    tags = scan_until_settled(scanner)
    policy = policy_of(scanner)
    done = called_rows(scanner)
    assert {row.action for row in done} == set(EXECUTORS)  # every action ran: the widest enforce footprint

    called = {iam_action(*op.split(":", 1)) for op in scanner.aws.counter.by_operation()} - NO_PERMISSION_NEEDED
    names = {action for s in policy["Statement"] if s["Effect"] == "Allow" for action in s["Action"]}
    assert called <= names, f"missing from the policy: {sorted(called - names)}"
    reads = {action for action in called if is_read_only(action.split(":", 1)[1])}
    assert all(allowed(policy, (action, "*", {})) for action in reads)

    authorised: dict[str, int] = {}
    for row in done:
        for action, requests in calls(row, tags[row.resource_id], sandbox.endpoint_url).items():
            assert allowed(policy, *requests), (row.action, row.resource_id, requests)
            authorised[action] = authorised.get(action, 0) + 1
    assert authorised == mutating(scanner)  # each mutating call sent is one of these, authorised


def test_the_policy_allows_destructive_calls_only_on_managed_resources(
        team_account: GroundTruth, sandbox: SandboxServer, registry, make_settings) -> None:
    region = "us-east-1"
    expected = {rule: sorted(key[2] for key in team_account.expected(rule) if key[1] == region)
                for rule in EVERY_ACTION}
    managed = {rule: ids[0] for rule, ids in expected.items() if ids}
    ec2, logs = (sandbox_client(sandbox.endpoint_url, service, region) for service in ("ec2", "logs"))
    ec2.create_tags(Resources=[managed[rule] for rule in ("idle-vms", "detached-volumes", "unattached-eips",
                                                          "orphaned-snapshots")],
                    Tags=[{"Key": MANAGED[0], "Value": MANAGED[1]}])
    [group] = [g for g in logs.describe_log_groups()["logGroups"] if g["logGroupName"] == managed["log-retention"]]
    logs.tag_resource(resourceArn=group["arn"].removesuffix(":*"), tags={MANAGED[0]: MANAGED[1]})

    scanner = enforcing(registry, make_settings, act_on_unmanaged=False, regions=[region])
    tags = scan_until_settled(scanner, regions=[region])
    policy = policy_of(scanner)
    done = called_rows(scanner)
    destructive = [row for row in done if EXECUTORS[row.action].destructive]
    assert {row.resource_id for row in destructive} == {managed[rule] for rule in managed if rule != "idle-gpu"}
    assert {row.action for row in done} == set(EXECUTORS)
    authorised: dict[str, int] = {}
    for row in done:
        for action, requests in calls(row, tags[row.resource_id], sandbox.endpoint_url).items():
            assert allowed(policy, *requests), (row.action, row.resource_id, requests)
            authorised[action] = authorised.get(action, 0) + 1
    assert authorised == mutating(scanner)

    # what the scope gate held back, the account would refuse too
    held_back = 0
    for rule, ids in expected.items():
        action = EVERY_ACTION[rule]
        if not EXECUTORS[action].destructive:
            continue
        for resource_id in ids:
            if resource_id == managed[rule] or action == "snapshot-then-delete":
                continue  # (an unmanaged volume's delete is refused already at its snapshot)
            [operation] = EXECUTORS[action].operations
            row = ActionRow(action=action, region=region, resource_id=resource_id,
                            resource_type=EXECUTORS[action].resource_type, detail={})
            [(_, requests)] = calls(row, tags[resource_id], sandbox.endpoint_url).items()
            assert not allowed(policy, *requests), (action, resource_id)
            held_back += 1
    assert held_back > 0


def test_tag_conditions_follow_act_on_unmanaged(registry, make_settings) -> None:
    for act_on_unmanaged in (False, True):
        scanner = enforcing(registry, make_settings, act_on_unmanaged=act_on_unmanaged)
        statements = policy_of(scanner)["Statement"]
        for name, executor in EXECUTORS.items():
            resource = executor.iam_resource.format(region="*", account="*")
            [statement] = [s for s in statements if s["Effect"] == "Allow" and s["Resource"] == resource
                           and set(s["Action"]) & set(executor.operations)]
            scoped = statement.get("Condition") == {"StringEquals": {f"aws:ResourceTag/{MANAGED[0]}": MANAGED[1]}}
            assert scoped == (executor.destructive and not act_on_unmanaged), (name, act_on_unmanaged, statement)
            if not scoped:
                assert "Condition" not in statement, statement


def test_the_protection_deny_covers_every_mutating_action(registry, make_settings) -> None:
    scanner = enforcing(registry, make_settings, act_on_unmanaged=True)
    policy = policy_of(scanner)
    [deny] = [s for s in policy["Statement"] if s["Sid"] == "VmguardNeverTouchProtected"]
    assert deny["Condition"] == {"StringEqualsIgnoreCase": {f"aws:ResourceTag/{PROTECT[0]}": PROTECT[1]}}
    assert deny["Resource"] == "*"
    every = {op for executor in EXECUTORS.values() for op in executor.operations}
    # CreateTags is allowed only while CreateSnapshot creates the snapshot (never on an existing resource)
    assert set(deny["Action"]) == every - {"ec2:CreateTags"}
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow" and "ec2:CreateTags" in statement["Action"]:
            assert statement["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateSnapshot"}}
    protected = {f"aws:ResourceTag/{PROTECT[0]}": "True"}  # any case of the value
    for operation in every - {"ec2:CreateTags"}:
        name = next(n for n, e in EXECUTORS.items() if operation in e.operations)
        arn = EXECUTORS[name].iam_resource.format(region="us-east-1", account=ACCOUNT).replace("*", "x")
        assert allowed(policy, (operation, arn, {}))
        assert not allowed(policy, (operation, arn, protected)), operation


@pytest.mark.parametrize("act_on_instance_store", [False, True])
def test_the_policy_denies_the_stops_the_daemon_never_makes(registry, make_settings,
                                                             act_on_instance_store: bool) -> None:
    """Spot instances, Auto Scaling members and managed-service nodes are never a rule's to stop or terminate;
    instance-store types only where the rules opt in."""
    scanner = enforcing(registry, make_settings, act_on_unmanaged=True, act_on_instance_store=act_on_instance_store)
    policy = policy_of(scanner)
    arn = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"
    on_demand = {"ec2:InstanceMarketType": "on-demand", "ec2:InstanceType": "m5.large"}
    never = [{"ec2:InstanceMarketType": "spot"}, {"aws:ResourceTag/aws:autoscaling:groupName": "workers"},
             {"aws:ResourceTag/eks:cluster-name": "ml"}, {"aws:ResourceTag/aws:elasticmapreduce:job-flow-id": "j-1"},
             {"aws:ResourceTag/AmazonECSManaged": ""}, {"aws:ResourceTag/aws:batch:compute-environment": "ce"}]
    store_types = ["m5d.large", "g4dn.xlarge", "g5.xlarge", "p4d.24xlarge", "i3.large", "c6gd.medium"]
    for operation in ("ec2:StopInstances", "ec2:TerminateInstances"):
        assert allowed(policy, (operation, arn, on_demand))
        for context in never:
            assert not allowed(policy, (operation, arn, on_demand | context)), (operation, context)
        for instance_type in store_types:
            held = not allowed(policy, (operation, arn, on_demand | {"ec2:InstanceType": instance_type}))
            assert held == (not act_on_instance_store), (operation, instance_type)
        for instance_type in ("t3.large", "m5.large", "c6g.medium", "g5g.xlarge", "inf2.xlarge", "r6i.large"):
            assert allowed(policy, (operation, arn, on_demand | {"ec2:InstanceType": instance_type})), instance_type


@pytest.mark.parametrize("act_on_unmanaged", [False, True])
def test_iam_policy_command_prints_the_enforce_policy(registry, make_settings, tmp_path, monkeypatch,
                                                      act_on_unmanaged: bool) -> None:
    monkeypatch.chdir(tmp_path)  # no guard.toml
    environment = {"GUARD_MODE": "enforce", "GUARD_ALLOWED_ACCOUNTS": ACCOUNT, "GUARD_MANAGED_TAG": "team:bot=yes"}
    for rule_id, action in EVERY_ACTION.items():
        prefix = f"GUARD_RULES__{rule_id.upper().replace('-', '_')}__"
        environment |= {prefix + "ACTION": action, prefix + "ACT_ON_UNMANAGED": str(act_on_unmanaged).lower()}
    environment["GUARD_RULES__CHATTY_S3__ENABLED"] = "false"
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["iam-policy", "--mode", "enforce"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    settings = make_settings(regions=["us-east-1"])
    assert settings.mode == "enforce" and settings.rule_configs["idle-vms"].action == "terminate"
    rules = [registry.rules[rule_id](settings.rule_configs[rule_id]) for rule_id in settings.enabled_rules()]
    assert "chatty-s3" not in {rule.id for rule in rules}
    assert printed == enforce_policy(rules, ("team:bot", "yes"), settings.protect_tag_pair, keepalive=True)
    # (keepalive's own statements are always conditioned on the managed tag: they are checked in test_keepalive.py)
    conditions = json.dumps([s.get("Condition") for s in printed["Statement"]
                             if not s["Sid"].startswith("VmguardKeepalive")])
    assert ("aws:ResourceTag/team:bot" in conditions) == (not act_on_unmanaged)
