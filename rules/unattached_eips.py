"""The ``unattached-eips`` rule."""

from __future__ import annotations

from guard.model import Address, Evaluation, Finding, Severity, Snapshot
from guard.pricing import HOURS_PER_MONTH, PUBLIC_IPV4_USD_PER_HOUR
from guard.rule import Context, Rule


class UnattachedEIPs(Rule):
    """Elastic IPs associated with nothing: no instance, no network interface.

    What it detects
        An Elastic IP with no association: no `AssociationId`, no instance and no network interface. Addresses
        that are associated (with a running or stopped instance, a NAT gateway or a load balancer) are left alone.
    Why it costs money
        Since February 2024 AWS bills every public IPv4 address $0.005 an hour, attached or not: an address kept
        "for later" costs $3.65 a month and does nothing.
    Example
        The Elastic IP of a bastion host that was terminated last quarter, still allocated: $0.005/hour.
    Fix
        Release the address (`aws ec2 release-address --allocation-id …`), or associate it with what needs it.
    """

    id = "unattached-eips"
    resource_type = "elastic-ip"
    needs = frozenset({"addresses"})
    inputs = "Elastic IPs (association, instance, network interface)"
    waste_formula = "$0.005/hour per address (public IPv4 list price)"
    suggested_action = "release"
    actions = ("release",)
    iam_permissions = ("ec2:DescribeAddresses",)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        findings = tuple(
            self._finding(address, snapshot.region, context)
            for address in snapshot.addresses or ()
            if not (address.association_id or address.instance_id or address.network_interface_id)
            and not context.is_protected(address.tags)
        )
        return Evaluation(findings=findings)

    def _finding(self, address: Address, region: str, context: Context) -> Finding:
        hourly = PUBLIC_IPV4_USD_PER_HOUR
        return Finding(
            rule=self.id,
            resource_id=address.allocation_id,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(address.tags),
            severity=Severity.low,
            waste_hourly_usd=hourly,
            summary=f"Elastic IP {address.public_ip} associated with nothing — ${hourly:.3f}/hour",
            suggested_action=self.suggested_action,
            evidence={
                "public_ip": address.public_ip,
                "allocation_id": address.allocation_id,
                "usd_per_hour": hourly,
                "monthly_usd": round(hourly * HOURS_PER_MONTH, 2),
                "price": "known",
            },
        )
