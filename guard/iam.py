"""Least-privilege IAM policies for the daemon: what the enabled rules read, and what their actions change.

The enforce policy allows each configured action's calls only on resources tagged ``guard:managed`` unless the rule
opts in to unmanaged resources, denies a rule's stop or terminate of the instances the daemon never stops (spot,
Auto Scaling, managed-service nodes, instance store unless opted in), and denies every mutating call on a resource
carrying the protection tag — so the
account itself holds the gates even if the daemon had a bug. Keepalive enforcement of registered clusters (on unless
``enforce_keepalive = false``) runs in every mode, so both policies then allow its two calls, on ``guard:managed``
resources only and never on protected ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from guard.actions.executors import EXECUTORS, TERMINATE_CLUSTER, Executor
from guard.rule import Rule, RuleConfig
from guard.stoppable import (
    AUTOSCALING_TAG,
    INSTANCE_ACTIONS,
    INSTANCE_STORE_TYPE_PATTERNS,
    MANAGED_SERVICE_TAGS,
    acts_on_instances,
)

_SERVICE_PREFIX = {
    "auto-scaling": "autoscaling",
    "cloudwatch-logs": "logs",
    "resource-groups-tagging-api": "tag",
    "service-quotas": "servicequotas",
}
"""botocore service ids whose IAM prefix differs."""
_ACTION = {
    ("s3", "ListBuckets"): "s3:ListAllMyBuckets",
}
"""Operations whose IAM action is not named after them."""
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})
DESCRIBE_INSTANCE_TYPES = "ec2:DescribeInstanceTypes"
"""Operations AWS allows to every principal."""


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorises a botocore (service id, operation) call."""
    return _ACTION.get((service, operation), f"{_SERVICE_PREFIX.get(service, service)}:{operation}")


def observe_policy(rules: Iterable[type[Rule] | Rule], keepalive: bool = False,
                   managed_tag: tuple[str, str] = ("guard:managed", "true"),
                   protect_tag: tuple[str, str] = ("guard:protect", "true")) -> dict:
    """A read-only policy: the union of the rules' permissions (observe mode makes no other mutating call) — plus,
    with ``keepalive``, the calls that terminate an expired registered cluster (managed, unprotected resources)."""
    rules = list(rules)
    actions = {permission for rule in rules for permission in rule.iam_permissions}
    if any(isinstance(rule, Rule) and acts_on_instances(rule) for rule in rules):
        actions.add(DESCRIBE_INSTANCE_TYPES)  # dry-run reads whether a planned stop would erase instance store
    statements: list[dict] = []
    if keepalive:
        actions |= _keepalive_reads()
        statements += [*_keepalive_statements(managed_tag), _protect_statement(_keepalive_operations(), protect_tag)]
    observe = {"Sid": "VmguardObserve", "Effect": "Allow", "Action": sorted(actions), "Resource": "*"}
    return {"Version": "2012-10-17", "Statement": [observe, *statements]}


def _keepalive_reads() -> set[str]:
    return {iam_action(*op.split(":")) for op in TERMINATE_CLUSTER.reads}


def _keepalive_operations() -> set[str]:
    return {iam_action(*op.split(":")) for op in TERMINATE_CLUSTER.operations}


def _keepalive_statements(managed_tag: tuple[str, str]) -> list[dict]:
    """TerminateInstances on instances and DeleteSecurityGroup on security groups, only those the SDK launched (the
    daemon also checks the cluster tag, which IAM cannot compare with the cluster id)."""
    key, value = managed_tag
    on_managed = {"StringEquals": {f"aws:ResourceTag/{key}": value}}
    return [_statement("VmguardKeepalive" + operation.split(":")[1], [iam_action(*operation.split(":"))],
                       resource.format(region="*", account="*"), on_managed)
            for operation, resource in sorted(TERMINATE_CLUSTER.iam_resources.items())]


def _protect_statement(actions: Iterable[str], protect_tag: tuple[str, str]) -> dict:
    key, value = protect_tag
    return {"Sid": "VmguardNeverTouchProtected", "Effect": "Deny", "Action": sorted(actions), "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {f"aws:ResourceTag/{key}": value}}}


def render(policy: dict) -> str:
    return json.dumps(policy, indent=2)


def actions_in_use(rules: Iterable[Rule]) -> dict[str, bool]:
    """Executor name → whether any rule using it acts on unmanaged resources too (needs no tag condition)."""
    used: dict[str, bool] = {}
    for rule in rules:
        config: RuleConfig = rule.config
        if not config.enabled or config.action == "notify":
            continue
        names = [config.action]
        if config.action == "terminate" and rule.stop_before_terminate:
            names.insert(0, "stop")
        for name in names:
            unconditioned = config.act_on_unmanaged or not EXECUTORS[name].destructive
            used[name] = used.get(name, False) or unconditioned
    return used


def enforce_policy(rules: list[Rule], managed_tag: tuple[str, str], protect_tag: tuple[str, str],
                   keepalive: bool = False) -> dict:
    """The observe policy, plus each enabled action's calls (tag-conditioned where AWS allows) and a protection Deny;
    with ``keepalive``, also the calls that terminate an expired registered cluster (on managed resources)."""
    used = actions_in_use(rules)
    reads = {permission for rule in rules for permission in rule.iam_permissions}
    reads |= {iam_action(*op.split(":")) for name in used for op in EXECUTORS[name].reads}
    if keepalive:
        reads |= _keepalive_reads()
    statements: list[dict] = [{"Sid": "VmguardObserve", "Effect": "Allow", "Action": sorted(reads), "Resource": "*"}]
    for name, unconditioned in sorted(used.items()):
        statements += _action_statements(EXECUTORS[name], managed_tag, conditioned=not unconditioned)
    statements += _never_stop_statements(rules, used)
    mutating = {op for name in used for op in EXECUTORS[name].operations} - {"ec2:CreateTags"}
    if keepalive:
        statements += _keepalive_statements(managed_tag)
        mutating |= _keepalive_operations()
    if mutating:
        statements.append(_protect_statement(mutating, protect_tag))
    return {"Version": "2012-10-17", "Statement": statements}


def _never_stop_statements(rules: list[Rule], used: dict[str, bool]) -> list[dict]:
    """Denies of a rule's stop or terminate where the daemon never makes them (``guard.stoppable``): spot instances,
    Auto Scaling group members, nodes of managed services (the exact tag keys; IAM cannot match a key prefix), and —
    unless a rule acting on instances sets ``act_on_instance_store`` — the types with instance-store volumes.
    Keepalive termination of an SDK cluster is not a rule's action and is not denied."""
    actions = sorted({op for name in used if name in INSTANCE_ACTIONS for op in EXECUTORS[name].operations})
    if not actions:
        return []
    resource = "arn:aws:ec2:*:*:instance/*"
    statements = [{"Sid": "VmguardNeverStopSpot", "Effect": "Deny", "Action": actions, "Resource": resource,
                   "Condition": {"StringEquals": {"ec2:InstanceMarketType": "spot"}}}]
    keys = [AUTOSCALING_TAG, *dict.fromkeys(key for key, _ in MANAGED_SERVICE_TAGS)]
    for number, key in enumerate(keys, start=1):
        statements.append({"Sid": f"VmguardNeverStopTagged{number}", "Effect": "Deny", "Action": actions,
                           "Resource": resource, "Condition": {"Null": {f"aws:ResourceTag/{key}": "false"}}})
    opted_in = any(rule.config.act_on_instance_store for rule in rules
                   if rule.config.enabled and rule.config.action in INSTANCE_ACTIONS)
    if not opted_in:
        statements.append({"Sid": "VmguardNeverStopInstanceStore", "Effect": "Deny", "Action": actions,
                           "Resource": resource,
                           "Condition": {"StringLike": {"ec2:InstanceType": list(INSTANCE_STORE_TYPE_PATTERNS)}}})
    return statements


def _sid(name: str) -> str:
    return "VmguardAct" + "".join(part.capitalize() for part in name.split("-"))


def _action_statements(executor: Executor, managed_tag: tuple[str, str], conditioned: bool) -> list[dict]:
    key, value = managed_tag
    resource = executor.iam_resource.format(region="*", account="*")
    on_managed = {"StringEquals": {f"aws:ResourceTag/{key}": value}} if conditioned and executor.tag_conditions \
        else None
    if executor.name == "snapshot-then-delete":
        # the volume is read and deleted (tag-conditioned); the new snapshot can only be made with its key tag
        return [
            _statement(_sid(executor.name) + "Volume", ["ec2:CreateSnapshot", "ec2:DeleteVolume"], resource,
                       on_managed),
            _statement(_sid(executor.name) + "Snapshot", ["ec2:CreateSnapshot"], "arn:aws:ec2:*::snapshot/*",
                       {"Null": {"aws:RequestTag/guard:action-key": "false"}}),
            _statement(_sid(executor.name) + "Tags", ["ec2:CreateTags"], "arn:aws:ec2:*::snapshot/*",
                       {"StringEquals": {"ec2:CreateAction": "CreateSnapshot"}}),
        ]
    return [_statement(_sid(executor.name), list(executor.operations), resource, on_managed)]


def _statement(sid: str, actions: list[str], resource: str, condition: dict | None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement
