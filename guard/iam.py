"""Least-privilege IAM policies for the daemon: what the enabled rules read, and what their actions change.

The enforce policy allows each configured action's calls only on resources tagged ``guard:managed`` unless the rule
opts in to unmanaged resources, and denies every mutating call on a resource carrying the protection tag — so the
account itself holds the gates even if the daemon had a bug.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from guard.actions.executors import EXECUTORS, Executor
from guard.rule import Rule, RuleConfig

_SERVICE_PREFIX = {
    "cloudwatch-logs": "logs",
    "resource-groups-tagging-api": "tag",
}
"""botocore service ids whose IAM prefix differs."""
_ACTION = {
    ("s3", "ListBuckets"): "s3:ListAllMyBuckets",
}
"""Operations whose IAM action is not named after them."""
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})
"""Operations AWS allows to every principal."""


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorises a botocore (service id, operation) call."""
    return _ACTION.get((service, operation), f"{_SERVICE_PREFIX.get(service, service)}:{operation}")


def observe_policy(rules: Iterable[type[Rule] | Rule]) -> dict:
    """A read-only policy: the union of the rules' permissions (observe mode makes no mutating call)."""
    actions = sorted({permission for rule in rules for permission in rule.iam_permissions})
    return {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "VmguardObserve", "Effect": "Allow", "Action": actions, "Resource": "*"}],
    }


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


def enforce_policy(rules: list[Rule], managed_tag: tuple[str, str], protect_tag: tuple[str, str]) -> dict:
    """The observe policy, plus each enabled action's calls (tag-conditioned where AWS allows) and a protection Deny."""
    used = actions_in_use(rules)
    reads = {permission for rule in rules for permission in rule.iam_permissions}
    reads |= {iam_action(*op.split(":")) for name in used for op in EXECUTORS[name].reads}
    statements: list[dict] = [{"Sid": "VmguardObserve", "Effect": "Allow", "Action": sorted(reads), "Resource": "*"}]
    for name, unconditioned in sorted(used.items()):
        statements += _action_statements(EXECUTORS[name], managed_tag, conditioned=not unconditioned)
    mutating = sorted({op for name in used for op in EXECUTORS[name].operations} - {"ec2:CreateTags"})
    if mutating:
        key, value = protect_tag
        statements.append({"Sid": "VmguardNeverTouchProtected", "Effect": "Deny", "Action": mutating, "Resource": "*",
                           "Condition": {"StringEqualsIgnoreCase": {f"aws:ResourceTag/{key}": value}}})
    return {"Version": "2012-10-17", "Statement": statements}


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
