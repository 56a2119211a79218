"""Fail a booting cluster fast when one of its VMs ended, and say why with the end of its console output.

A VM whose boot fails (an environment that does not install, an agent that exits) powers itself off and, with
``InstanceInitiatedShutdownBehavior=terminate``, is terminated; without a check the client would wait its whole
``boot_timeout`` for a scheduler that will never answer. :class:`BootWatch` looks, at most every ``CHECK_SECONDS``,
for an instance of the cluster in ``shutting-down`` or ``terminated`` (one DescribeInstances filtered by the
cluster tag, whatever the cluster's size) and raises an ``SdkError`` with the last lines of that VM's console
output (``ec2:GetConsoleOutput``: the serial console, where the user-data's boot script writes its log too).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sdk.errors import SdkError

log = logging.getLogger(__name__)

CHECK_SECONDS = 3.0
"""How often a booting cluster's instances are looked at (each look is one DescribeInstances)."""
TAIL_LINES = 12
"""Console lines an error quotes."""
TAIL_CHARACTERS = 2000
ENDED_STATES = ("shutting-down", "terminated")


class BootWatch:
    """Raises, from :meth:`check`, once an instance of ``cluster_id`` has ended; cheap to call in a tight loop."""

    def __init__(self, ec2: Any, cluster_id: str, every: float = CHECK_SECONDS) -> None:
        self.ec2 = ec2
        self.cluster_id = cluster_id
        self.every = every
        self._next = 0.0

    def check(self) -> None:
        """Look (if ``every`` seconds have passed since the last look); ``SdkError`` if a VM has ended."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        ended = self._ended()
        if ended is not None:
            raise SdkError(ended_message(self.ec2, self.cluster_id, ended))

    def _ended(self) -> dict[str, Any] | None:
        """An ended instance of the cluster (its scheduler first), or None; a failed look counts as none."""
        try:
            reply = self.ec2.describe_instances(Filters=[
                {"Name": "tag:vmguard:cluster", "Values": [self.cluster_id]},
                {"Name": "instance-state-name", "Values": list(ENDED_STATES)}])
        except (ClientError, BotoCoreError) as exc:  # a blip: the next look tells
            log.info("cannot look at the instances of %s (%s)", self.cluster_id, exc)
            return None
        ended = [i for r in reply.get("Reservations", []) for i in r.get("Instances", [])]
        return min(ended, key=lambda i: _role(i) != "scheduler", default=None)


def ended_message(ec2: Any, cluster_id: str, instance: dict[str, Any]) -> str:
    """The error for a VM that ended while its cluster booted: which, how, and the end of its console."""
    state = instance.get("State", {}).get("Name", "ended")
    reason = instance.get("StateReason", {}).get("Message") or instance.get("StateTransitionReason") or ""
    tail = console_tail(ec2, instance["InstanceId"])
    console = f"its console ends: {tail}" if tail else "its console output is empty"
    return (f"the {_role(instance)} {instance['InstanceId']} of {cluster_id} is {state} before the cluster answered"
            f"{f' ({reason})' if reason else ''}; {console}; the cluster was torn down")


def console_tail(ec2: Any, instance_id: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of the instance's console output, joined with `` | ``; '' if none.

    The latest output where the instance type supports it (``Latest=True``, Nitro), else the buffered one.
    EC2 sends it base64-encoded; botocore hands it over decoded.
    """
    reply: dict[str, Any] = {}
    for latest in (True, False):
        try:
            reply = ec2.get_console_output(InstanceId=instance_id, Latest=latest)
            break
        except (ClientError, BotoCoreError) as exc:
            log.info("cannot read the console of %s (Latest=%s: %s)", instance_id, latest, exc)
    text = reply.get("Output") or ""  # botocore decodes EC2's base64 for us
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-TAIL_CHARACTERS:]


def _role(instance: dict[str, Any]) -> str:
    tags = {tag.get("Key"): tag.get("Value") for tag in instance.get("Tags", [])}
    return tags.get("vmguard:role") or "VM"
