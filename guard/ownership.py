"""Whose VMs a registration names: the owner tag of every instance, read from EC2 before the daemon accepts it.

The keepalive terminates what a registration names, so a registration is accepted only when every instance it
lists — and every instance tagged with its cluster id — carries the SDK's owner tag with the registering owner.
Otherwise owner A could register a cluster id seen in B's tags (or B's instance ids) and have the daemon end B's VMs.
"""

from __future__ import annotations

from collections.abc import Sequence

from guard.aws import Aws
from guard.model import CLUSTER_TAG, freeze_tags
from guard.wire import OWNER_TAG, ClusterRegistration

_CHUNK = 200
"""Values per Describe filter (EC2 accepts at most 200)."""


class NotYourInstances(Exception):
    """An instance of the registration is another owner's (or nobody's); the message names it, in one line."""


class NotVisibleYet(Exception):
    """EC2 does not show a registered instance yet (its API is eventually consistent): register again shortly."""


class InstanceOwners:
    """Checks registrations against EC2 with the daemon's own (read-only) AWS access."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws

    def owners(self, region: str, instance_ids: Sequence[str], cluster_id: str) -> dict[str, str | None]:
        """instance id → its owner tag (None when untagged), for the listed instances and those tagged with the
        cluster id; paged, at most 200 ids per call."""
        ec2 = self.aws.client("ec2", region)
        ids = list(dict.fromkeys(instance_ids))
        queries = [[{"Name": "instance-id", "Values": ids[i:i + _CHUNK]}] for i in range(0, len(ids), _CHUNK)]
        queries.append([{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster_id]}])
        found: dict[str, str | None] = {}
        for filters in queries:
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        found[instance["InstanceId"]] = freeze_tags(instance.get("Tags")).get(OWNER_TAG)
        return found

    def check(self, registration: ClusterRegistration) -> None:
        """Raise :class:`NotYourInstances` or :class:`NotVisibleYet`; return when every instance is the owner's."""
        found = self.owners(registration.region, registration.instance_ids, registration.cluster_id)
        others = sorted((instance_id, owner) for instance_id, owner in found.items() if owner != registration.owner)
        if others:
            instance_id, owner = others[0]
            tagged = f"tagged {OWNER_TAG}={owner}" if owner is not None else f"has no {OWNER_TAG} tag"
            more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
            raise NotYourInstances(f"instance {instance_id}{more} {tagged}, not {OWNER_TAG}="
                                   f"{registration.owner}: a cluster is registered only by the owner of its "
                                   "instances")
        missing = [instance_id for instance_id in registration.instance_ids if instance_id not in found]
        if missing:
            raise NotVisibleYet(f"EC2 does not show instance {missing[0]} in {registration.region} yet"
                                f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                                "register again in a few seconds")
