"""Least-privilege IAM policies for the daemon, built from what the enabled rules declare they read."""

from __future__ import annotations

import json
from collections.abc import Iterable

from guard.rule import Rule

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
