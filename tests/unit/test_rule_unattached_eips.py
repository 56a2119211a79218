"""rules.unattached_eips: Elastic IPs associated with nothing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.model import Address, Severity, Snapshot, freeze_tags
from guard.pricing import default_catalog
from guard.rule import ACTION_SETTINGS, Context
from rules.unattached_eips import UnattachedEIPs

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = Context(prices=default_catalog())


def make_address(allocation_id: str = "eipalloc-1", association_id: str | None = None, instance_id: str | None = None,
                 network_interface_id: str | None = None, tags: Mapping[str, str] | None = None) -> Address:
    return Address(allocation_id=allocation_id, public_ip="203.0.113.7", association_id=association_id,
                   instance_id=instance_id, network_interface_id=network_interface_id,
                   tags=freeze_tags(tags if tags is not None else {}))


def evaluate(*addresses: Address, region: str = "us-east-1", context: Context = CONTEXT):
    snapshot = Snapshot(account_id="123456789012", region=region, taken_at=NOW, addresses=tuple(addresses))
    return UnattachedEIPs().evaluate(snapshot, context)


def test_unassociated_address_is_a_low_finding_at_half_a_cent_an_hour() -> None:
    result = evaluate(make_address(tags={"owner": "ana"}))
    (finding,) = result.findings
    assert result.undetermined == frozenset()
    assert finding.waste_hourly_usd == 0.005
    assert (finding.rule, finding.resource_id, finding.resource_type, finding.region) == (
        "unattached-eips", "eipalloc-1", "elastic-ip", "us-east-1")
    assert finding.owner == "ana"
    assert finding.severity is Severity.low
    assert finding.suggested_action == "release"
    assert finding.evidence == {"public_ip": "203.0.113.7", "allocation_id": "eipalloc-1", "usd_per_hour": 0.005,
                                "monthly_usd": 3.65, "price": "known"}
    assert "203.0.113.7" in finding.summary and "$0.005/hour" in finding.summary


@pytest.mark.parametrize("association", [
    {"association_id": "eipassoc-1", "instance_id": "i-1", "network_interface_id": "eni-1"},
    {"association_id": "eipassoc-1", "network_interface_id": "eni-1"},  # a NAT gateway or a load balancer
    {"association_id": "eipassoc-1"},
    {"instance_id": "i-1"},  # EC2-Classic style: an instance without an association id
    {"network_interface_id": "eni-1"},
])
def test_any_association_is_not_a_finding(association: dict[str, str]) -> None:
    assert evaluate(make_address(**association)).findings == ()


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_protected_address_is_not_a_finding(value: str) -> None:
    assert evaluate(make_address(tags={"guard:protect": value})).findings == ()


def test_protect_tag_with_another_value_does_not_protect() -> None:
    assert len(evaluate(make_address(tags={"guard:protect": "no"})).findings) == 1


def test_custom_owner_and_protect_tags_from_context() -> None:
    context = Context(prices=default_catalog(), owner_tag="team-lead", protect_tag="keep", protect_value="yes")
    kept = make_address("eipalloc-kept", tags={"keep": "yes"})
    other = make_address("eipalloc-other", tags={"team-lead": "bo", "owner": "ana"})
    (finding,) = evaluate(kept, other, context=context).findings
    assert (finding.resource_id, finding.owner) == ("eipalloc-other", "bo")


def test_owner_is_unknown_without_owner_tag() -> None:
    (finding,) = evaluate(make_address()).findings
    assert finding.owner == "unknown"


def test_price_is_the_same_in_every_region() -> None:
    (finding,) = evaluate(make_address(), region="eu-central-1").findings
    assert (finding.region, finding.waste_hourly_usd) == ("eu-central-1", 0.005)


def test_mixed_addresses_report_only_the_unassociated_ones() -> None:
    addresses = [make_address("eipalloc-free"), make_address("eipalloc-nat", "eipassoc-1", None, "eni-1"),
                 make_address("eipalloc-vm", "eipassoc-2", "i-1", "eni-2"), make_address("eipalloc-free-2")]
    assert [f.resource_id for f in evaluate(*addresses).findings] == ["eipalloc-free", "eipalloc-free-2"]


def test_no_addresses_no_findings() -> None:
    assert evaluate().findings == () and evaluate().undetermined == frozenset()


def test_unknown_addresses_part_does_not_crash() -> None:
    # the engine skips the rule when the part is unknown; evaluating anyway must still be harmless
    snapshot = Snapshot(account_id="123456789012", region="us-east-1", taken_at=NOW)
    result = UnattachedEIPs().evaluate(snapshot, CONTEXT)
    assert result.findings == () and result.undetermined == frozenset()


def test_config_has_no_thresholds_and_rejects_unknown_keys() -> None:
    assert set(UnattachedEIPs.Config.model_fields) == ACTION_SETTINGS
    with pytest.raises(ValidationError):
        UnattachedEIPs.Config(min_age="1h")


ids = st.sampled_from([None, "x-1"])


@settings(max_examples=100, deadline=None)
@given(specs=st.lists(st.tuples(ids, ids, ids, st.booleans()), max_size=8))
def test_a_finding_exactly_for_each_unassociated_unprotected_address(
        specs: list[tuple[str | None, str | None, str | None, bool]]) -> None:
    addresses = [make_address(f"eipalloc-{n}", association, instance, eni, {"guard:protect": "true"} if kept else {})
                 for n, (association, instance, eni, kept) in enumerate(specs)]
    result = evaluate(*addresses)
    expected = [a.allocation_id for a, (association, instance, eni, kept) in zip(addresses, specs, strict=True)
                if not (association or instance or eni or kept)]
    assert [f.resource_id for f in result.findings] == expected
    assert sum(f.waste_hourly_usd for f in result.findings) == pytest.approx(0.005 * len(expected))
