"""guard.stoppable: which instances a rule's stop or terminate must leave alone, and the gate that holds them back."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from guard.actions.gates import EXECUTE, Candidate, Policy, decide
from guard.audit import Intent
from guard.model import Instance, freeze_tags
from guard.stoppable import (
    HAZARD_RESULTS,
    SKIPPED_AUTOSCALING,
    SKIPPED_INSTANCE_STORE,
    SKIPPED_MANAGED_SERVICE,
    SKIPPED_SPOT,
    InstanceFacts,
    facts_of,
    managed_by,
    stop_hazard,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ACCOUNT = "123456789012"

MANAGED_TAGS = {
    "eks:cluster-name": "ml", "eks:nodegroup-name": "gpu", "kubernetes.io/cluster/ml": "owned",
    "AmazonECSManaged": "", "aws:ecs:clusterName": "jobs", "aws:elasticmapreduce:job-flow-id": "j-1ABC",
    "aws:sagemaker:domain-arn": "arn:aws:sagemaker:us-east-1:1:domain/d-1", "aws:batch:compute-environment": "ce",
    "karpenter.sh/nodepool": "default", "aws:ec2:fleet-id": "fleet-1", "aws:ec2spot:fleet-request-id": "sfr-1",
}
HARMLESS_TAGS = {"owner": "ana", "Name": "notebook", "guard:managed": "true", "team": "ml",
                 "kubernetes.io/role": "x", "eks": "no", "autoscaling": "no"}


def facts(tags: dict[str, str] | None = None, **fields) -> InstanceFacts:
    return InstanceFacts(**({"instance_type": "m5.large", "tags": freeze_tags(tags or {})} | fields))


# -- examples -------------------------------------------------------------------------------------------------------

def test_an_on_demand_ebs_only_instance_may_be_stopped() -> None:
    assert stop_hazard(facts({"owner": "ana"})) is None
    assert stop_hazard(facts(lifecycle="scheduled")) is None


def test_spot_instances_are_never_stopped_even_with_the_instance_store_opt_in() -> None:
    for spot in (facts(lifecycle="spot"), facts(spot_request_id="sir-123"),
                 facts(lifecycle="spot", spot_request_id="sir-123", instance_store=True)):
        hazard = stop_hazard(spot, act_on_instance_store=True)
        assert hazard is not None and hazard.result == SKIPPED_SPOT
        assert "spot" in hazard.reason


def test_auto_scaling_group_members_are_never_stopped() -> None:
    hazard = stop_hazard(facts({"aws:autoscaling:groupName": "workers"}), act_on_instance_store=True)
    assert hazard is not None and hazard.result == SKIPPED_AUTOSCALING
    assert "workers" in hazard.reason and "replaces" in hazard.reason


def test_managed_service_nodes_are_never_stopped() -> None:
    for key, value in MANAGED_TAGS.items():
        # an EKS managed node is in an Auto Scaling group too: the service is named, not the group
        hazard = stop_hazard(facts({key: value, "aws:autoscaling:groupName": "eks-gpu-123"}),
                             act_on_instance_store=True)
        assert hazard is not None and hazard.result == SKIPPED_MANAGED_SERVICE, key
        assert key in hazard.reason


def test_instance_store_instances_are_stopped_only_with_the_opt_in() -> None:
    for store in (True, None):  # None: DescribeInstanceTypes could not say — treated as having it
        hazard = stop_hazard(facts(instance_type="g4dn.xlarge", instance_store=store))
        assert hazard is not None and hazard.result == SKIPPED_INSTANCE_STORE
        assert "act_on_instance_store" in hazard.reason
        assert stop_hazard(facts(instance_type="g4dn.xlarge", instance_store=store), act_on_instance_store=True) \
            is None


def test_facts_of_a_scanned_instance_take_the_type_s_storage_from_the_scan() -> None:
    instance = Instance(id="i-1", instance_type="m5d.large", state="running", arch="x86_64", launch_time=NOW,
                        tags=freeze_tags({"owner": "ana"}), lifecycle="spot", spot_request_id="sir-1")
    seen = facts_of(instance, {"m5d.large": True})
    assert (seen.lifecycle, seen.spot_request_id, seen.instance_store) == ("spot", "sir-1", True)
    assert facts_of(instance, {"m5.large": False}).instance_store is None  # not described: unknown
    assert facts_of(instance, None).instance_store is None


def test_facts_from_describe_instances() -> None:
    raw = {"InstanceId": "i-1", "InstanceType": "i3.large", "InstanceLifecycle": "spot",
           "SpotInstanceRequestId": "sir-9", "Tags": [{"Key": "owner", "Value": "ana"}],
           "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-1"}}]}
    seen = InstanceFacts.from_describe(raw, instance_store=True)
    assert seen == InstanceFacts(instance_type="i3.large", tags=freeze_tags({"owner": "ana"}), lifecycle="spot",
                                 spot_request_id="sir-9", instance_store=True)


# -- properties -----------------------------------------------------------------------------------------------------

tag_sets = st.dictionaries(st.sampled_from(sorted(MANAGED_TAGS) + sorted(HARMLESS_TAGS)
                                           + ["aws:autoscaling:groupName"]), st.sampled_from(["", "x", "workers"]),
                           max_size=4)


@given(tags=tag_sets, lifecycle=st.sampled_from([None, "spot", "scheduled", "capacity-block"]),
       spot_request_id=st.sampled_from([None, "sir-1"]), instance_store=st.sampled_from([True, False, None]),
       opt_in=st.booleans())
def test_the_decision_follows_the_facts(tags, lifecycle, spot_request_id, instance_store, opt_in) -> None:
    seen = facts(tags, lifecycle=lifecycle, spot_request_id=spot_request_id, instance_store=instance_store)
    hazard = stop_hazard(seen, act_on_instance_store=opt_in)
    spot = lifecycle == "spot" or spot_request_id is not None
    managed = any(key in MANAGED_TAGS for key in tags)
    group = "aws:autoscaling:groupName" in tags
    store = instance_store is not False and not opt_in
    assert (hazard is None) == (not spot and not managed and not group and not store)
    if hazard is not None:
        assert hazard.result in HAZARD_RESULTS and hazard.reason
        expected = (SKIPPED_SPOT if spot else SKIPPED_MANAGED_SERVICE if managed else SKIPPED_AUTOSCALING if group
                    else SKIPPED_INSTANCE_STORE)
        assert hazard.result == expected
    # the opt-in only ever lets instance-store instances through, never spot, group or managed-service ones
    if spot or managed or group:
        assert stop_hazard(seen, act_on_instance_store=True) is not None
    assert (managed_by(seen.tags) is not None) == managed


# -- the gate -------------------------------------------------------------------------------------------------------

def _policy(mode: str) -> Policy:
    return Policy(mode=mode, allowed_accounts=frozenset({ACCOUNT}), allowed_regions=frozenset({"us-east-1"}),
                  protect_tag=("guard:protect", "true"), managed_tag=("guard:managed", "true"),
                  min_resource_age=timedelta(0), max_per_cycle=10, max_per_hour=10, breaker_failures=3,
                  breaker_cooldown=timedelta(hours=1), notification_required=False)


@given(action=st.sampled_from(["stop", "terminate"]), mode=st.sampled_from(["enforce", "dry-run"]),
       tags=tag_sets, lifecycle=st.sampled_from([None, "spot"]), instance_store=st.sampled_from([True, False, None]),
       opt_in=st.booleans())
def test_the_gate_never_executes_or_plans_a_hazardous_stop(action, mode, tags, lifecycle, instance_store,
                                                            opt_in) -> None:
    hazard = stop_hazard(facts(tags, lifecycle=lifecycle, instance_store=instance_store), opt_in)
    intent = Intent(key="k", rule="idle-vms", action=action, account_id=ACCOUNT, region="us-east-1",
                    resource_id="i-1", resource_type="instance", owner="ana", finding_id=1, summary="",
                    waste_hourly_usd=1.0, params={})
    candidate = Candidate(intent=intent, due_from=NOW - timedelta(days=2), grace=timedelta(0), announced=True,
                          act_on_unmanaged=True, tags=freeze_tags(tags), created_at=NOW - timedelta(days=30),
                          hazard=hazard)
    [verdict] = decide([candidate], _policy(mode), NOW, 0, 0, [])
    if hazard is not None:
        assert verdict.result == hazard.result
    else:
        assert verdict.result in (EXECUTE, "would-do")
