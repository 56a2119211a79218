"""Keepalive enforcement against the emulator: a registered cluster whose heartbeats stop (or that idles) is terminated
through the audit trail — its instances, then its security group — and nothing else is touched.

Time is passed to the keepalive check (``Keepalive.check(now)``) instead of waited for; the last test runs the real
scheduled job on a backdated heartbeat.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from faults import FaultProxy
from prometheus_client.parser import text_string_to_metric_families
from test_iam_enforce import allowed

from guard.audit import DONE, FAILED, IN_PROGRESS, PENDING, SKIPPED, AuditLog
from guard.aws import Aws, is_read_only
from guard.clusters import EXPIRED, RUNNING, TERMINATED, TERMINATING, ClusterRegistry
from guard.daemon import Daemon
from guard.iam import enforce_policy, observe_policy
from guard.rule import Registry
from guard.sandbox import SandboxServer, sandbox_client
from guard.sandbox.images import X86_64_IMAGE_ID
from guard.wire import ClusterRegistration, Heartbeat

ACCOUNT = "123456789012"
REGION = "us-east-1"
MANAGED = {"guard:managed": "true"}
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
"""Registration time of the clusters here: the check is told the time, so nothing waits for a keepalive."""


@pytest.fixture
def ec2(sandbox: SandboxServer):
    sandbox.reset()
    return sandbox_client(sandbox.endpoint_url, "ec2", REGION)


@pytest.fixture
def daemon(make_settings, registry: Registry) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**overrides) -> Daemon:
        made.append(Daemon(make_settings(**({"regions": [REGION]} | overrides)), registry, Aws()))
        made[-1].keepalive.check(now=T0 - timedelta(seconds=1))  # watching since before the clusters registered
        return made[-1]

    yield make
    for each in made:
        each.shutdown()


def sdk_tags(cluster_id: str, role: str, owner: str = "alice", **extra: str) -> list[dict[str, str]]:
    tags = MANAGED | {"owner": owner, "vmguard:cluster": cluster_id, "vmguard:role": role,
                      "vmguard:keepalive": "60", "vmguard:expires": "2030-01-02T12:00:00+00:00"} | extra
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def launch(ec2, cluster_id: str, workers: int = 2, owner: str = "alice",
           protect_worker: bool = False) -> tuple[list[str], str]:
    """What the SDK launches: a security group, a scheduler and the workers, every one tagged for the cluster."""
    group = ec2.create_security_group(
        GroupName=cluster_id, Description=f"vmguard cluster {cluster_id}",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": sdk_tags(cluster_id, "scheduler", owner)}],
    )["GroupId"]
    ids = []
    for role, count in (("scheduler", 1), ("worker", workers)):
        extra = {"guard:protect": "true"} if protect_worker and role == "worker" else {}
        tags = sdk_tags(cluster_id, role, owner, **extra)
        reply = ec2.run_instances(ImageId=X86_64_IMAGE_ID, InstanceType="m7i.large", MinCount=count, MaxCount=count,
                                  SecurityGroupIds=[group],
                                  TagSpecifications=[{"ResourceType": kind, "Tags": tags}
                                                     for kind in ("instance", "volume")])
        ids += [instance["InstanceId"] for instance in reply["Instances"]]
    return ids, group


def register(clusters: ClusterRegistry, cluster_id: str, ids: list[str], group: str | None, owner: str = "alice",
             keepalive: int = 60, idle: int | None = None, now: datetime = T0) -> None:
    registration = ClusterRegistration(
        cluster_id=cluster_id, owner=owner, region=REGION, instance_ids=ids, instance_types=["m7i.large"] * len(ids),
        security_group_id=group, keepalive_seconds=keepalive, idle_timeout_seconds=idle, hourly_usd=0.3)
    assert clusters.register(registration, registered_by=owner, now=now) is not None


def states(ec2, ids: list[str]) -> dict[str, str]:
    reply = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": ids}])
    return {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def group_exists(ec2, group: str) -> bool:
    return bool(ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroups"])


def mutations(aws: Aws) -> Counter:
    return Counter({op: n for op, n in aws.counter.by_operation().items() if not is_read_only(op.partition(":")[2])})


def audit_rows(daemon: Daemon) -> list:
    return [row for row in AuditLog(daemon.store).actions() if row.action == "terminate-cluster"]


def test_an_expired_cluster_is_terminated_in_observe_mode_and_nothing_else_is(ec2, daemon, sandbox) -> None:
    cluster_id = "vmg-expire01"
    ids, group = launch(ec2, cluster_id)
    untagged = ec2.run_instances(ImageId=X86_64_IMAGE_ID, InstanceType="t3.micro", MinCount=1,
                                 MaxCount=1)["Instances"][0]["InstanceId"]
    other_tags = [{"ResourceType": "instance", "Tags": sdk_tags("vmg-other01", "worker")}]  # another cluster's
    other = ec2.run_instances(ImageId=X86_64_IMAGE_ID, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                              TagSpecifications=other_tags)["Instances"][0]["InstanceId"]
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]  # waste a rule would release in enforce mode
    guard = daemon(mode="observe", rules={"unattached-eips": {"action": "release", "grace": "0s",
                                                              "act_on_unmanaged": True}})
    # the registration names instances that are not this cluster's: they are left alone
    register(guard.clusters, cluster_id, ids + [untagged, other], group)

    report = guard.keepalive.check(now=T0 + timedelta(seconds=59))
    assert report.expired == [] and guard.clusters.get(cluster_id).state == RUNNING
    assert guard.scanner.scan(REGION).status == "ok"
    assert mutations(guard.aws) == Counter()

    report = guard.keepalive.check(now=T0 + timedelta(seconds=61))
    assert report.expired == [cluster_id]
    assert [(rule, action, result) for rule, action, result in report.actions.results] == [
        ("keepalive", "terminate-cluster", DONE)]
    assert states(ec2, ids + [untagged, other]) == dict.fromkeys(ids, "terminated") | {untagged: "running",
                                                                                       other: "running"}
    assert not group_exists(ec2, group)
    assert mutations(guard.aws) == Counter({"ec2:TerminateInstances": 1, "ec2:DeleteSecurityGroup": 1})

    [row] = audit_rows(guard)
    assert (row.rule, row.status, row.resource_type, row.resource_id, row.owner) == (
        "keepalive", DONE, "cluster", cluster_id, "alice")
    assert (row.mode, row.approved_by, row.account_id, row.region) == ("observe", "sdk:alice", ACCOUNT, REGION)
    assert row.params["instance_ids"] == ids + [untagged, other] and row.params["security_group_id"] == group
    assert row.detail["terminated"] == sorted(ids) and row.detail["left_alone"] == sorted([untagged, other])
    assert row.detail["security_group_deleted"] == group and row.started_at and row.finished_at
    assert "no heartbeat for 1m1s (keepalive 1m)" in row.summary

    cluster = guard.clusters.get(cluster_id)
    assert cluster.state == TERMINATED and cluster.action_id == row.id and cluster.account_id == ACCOUNT
    assert cluster.reason == f"no heartbeat for 1m1s (keepalive 1m); terminated by the daemon (action {row.id})"

    # later checks and scans change nothing more; the observe-mode scan never released the address
    guard.keepalive.check(now=T0 + timedelta(minutes=5))
    assert guard.scanner.scan(REGION).status == "ok"
    assert mutations(guard.aws) == Counter({"ec2:TerminateInstances": 1, "ec2:DeleteSecurityGroup": 1})
    assert [a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]] == [address]
    assert len(audit_rows(guard)) == 1


def test_a_registration_never_ends_another_owners_instances(ec2, daemon) -> None:
    bobs, bobs_group = launch(ec2, "vmg-bobs0001", owner="bob")  # bob's cluster, which bob never registered
    alices, alices_group = launch(ec2, "vmg-alices01")
    guard = daemon(mode="enforce", allowed_accounts=ACCOUNT)
    # alice registers bob's cluster id, naming bob's instances and group; and her own cluster, naming bob's too
    register(guard.clusters, "vmg-bobs0001", bobs, bobs_group)
    register(guard.clusters, "vmg-alices01", alices + bobs[:1], alices_group)

    report = guard.keepalive.check(now=T0 + timedelta(minutes=2))
    assert sorted(report.actions.results) == [("keepalive", "terminate-cluster", DONE),
                                              ("keepalive", "terminate-cluster", "skipped-unmanaged")]
    assert states(ec2, bobs) == dict.fromkeys(bobs, "running") and group_exists(ec2, bobs_group)
    assert states(ec2, alices) == dict.fromkeys(alices, "terminated") and not group_exists(ec2, alices_group)
    done = next(row for row in audit_rows(guard) if row.resource_id == "vmg-alices01")
    assert done.detail["left_alone"] == bobs[:1]


def test_a_protected_cluster_is_skipped_and_stays_expired(ec2, daemon) -> None:
    cluster_id = "vmg-protect1"
    ids, group = launch(ec2, cluster_id, protect_worker=True)
    guard = daemon(mode="enforce", allowed_accounts=ACCOUNT)
    register(guard.clusters, cluster_id, ids, group)
    report = guard.keepalive.check(now=T0 + timedelta(minutes=2))
    assert report.actions.results == [("keepalive", "terminate-cluster", "skipped-protected")]
    [row] = audit_rows(guard)
    assert (row.status, row.error) == (SKIPPED, "protected by its tag")
    assert set(states(ec2, ids).values()) == {"running"} and group_exists(ec2, group)
    assert mutations(guard.aws) == Counter()
    cluster = guard.clusters.get(cluster_id)
    assert cluster.state == EXPIRED
    assert cluster.reason.endswith(f"; not terminated: protected by its tag (action {row.id})")
    guard.keepalive.check(now=T0 + timedelta(minutes=3))  # not tried again
    assert len(audit_rows(guard)) == 1 and mutations(guard.aws) == Counter()


def test_an_idle_cluster_expires_after_its_idle_timeout_although_it_heartbeats(ec2, daemon) -> None:
    cluster_id = "vmg-idle0001"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon()
    register(guard.clusters, cluster_id, ids, group, keepalive=600, idle=120)
    busy = Heartbeat(tasks_processing=3, workers=1, s3_requests={"team-data": {"GET": 40}})
    assert guard.clusters.heartbeat(cluster_id, busy, T0 + timedelta(seconds=50))[1]
    for second in (100, 150, 169):
        assert guard.clusters.heartbeat(cluster_id, Heartbeat(workers=1), T0 + timedelta(seconds=second))[1]
    row = guard.clusters.get(cluster_id)
    assert row.last_activity == T0 + timedelta(seconds=50) and row.last_heartbeat == T0 + timedelta(seconds=169)
    assert row.usage["s3_requests"]["value"] == {"team-data": {"GET": 40}} and row.heartbeats == 4
    assert guard.keepalive.check(now=T0 + timedelta(seconds=169)).expired == []

    report = guard.keepalive.check(now=T0 + timedelta(seconds=171))
    assert report.expired == [cluster_id]
    assert set(states(ec2, ids).values()) == {"terminated"} and not group_exists(ec2, group)
    cluster = guard.clusters.get(cluster_id)
    assert cluster.state == TERMINATED and cluster.reason.startswith("no task ran for 2m1s (idle timeout 2m)")
    # a heartbeat that arrives now is refused: the cluster is gone
    row, recorded = guard.clusters.heartbeat(cluster_id, busy, T0 + timedelta(seconds=172))
    assert not recorded and row.state == TERMINATED and row.heartbeats == 4


@pytest.mark.parametrize("called_before_the_crash", [False, True])
def test_a_pending_row_left_by_a_crash_is_finished_once(ec2, daemon, called_before_the_crash: bool) -> None:
    cluster_id = "vmg-crash001"
    ids, group = launch(ec2, cluster_id)
    first = daemon()
    register(first.clusters, cluster_id, ids, group)
    # the first daemon expired the cluster and committed its intent, then died before (or right after) the call
    cluster = first.clusters.get(cluster_id)
    assert first.clusters.expire(cluster, "no heartbeat for 5m (keepalive 1m)", T0 + timedelta(minutes=5))
    cluster = first.clusters.get(cluster_id)
    intent = first.keepalive.intent(cluster, ACCOUNT)
    row = first.scanner.actuator.audit.record(intent, PENDING, "observe", T0 + timedelta(minutes=5),
                                              approved_by="sdk:alice")
    if called_before_the_crash:
        ec2.terminate_instances(InstanceIds=ids)
    first.shutdown()

    second = daemon()  # a restarted daemon on the same database
    report = second.keepalive.check(now=T0 + timedelta(minutes=6))
    assert report.expired == []
    resumed = second.scanner.actuator.audit.get(row.id)
    assert resumed.status == DONE and resumed.detail["resumed"] is True
    assert len(audit_rows(second)) == 1
    assert set(states(ec2, ids).values()) == {"terminated"} and not group_exists(ec2, group)
    expected = Counter({"ec2:DeleteSecurityGroup": 1})
    if not called_before_the_crash:
        expected["ec2:TerminateInstances"] = 1
    assert mutations(second.aws) == expected
    cluster = second.clusters.get(cluster_id)
    assert (cluster.state, cluster.action_id) == (TERMINATED, row.id)


def test_the_scan_does_not_carry_out_keepalive_rows(ec2, daemon) -> None:
    """The keepalive job owns terminate-cluster rows; an observe-mode scan neither runs nor skips them."""
    cluster_id = "vmg-scanner1"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon()
    register(guard.clusters, cluster_id, ids, group)
    assert guard.clusters.expire(guard.clusters.get(cluster_id), "no heartbeat", T0 + timedelta(minutes=2))
    row = guard.scanner.actuator.audit.record(guard.keepalive.intent(guard.clusters.get(cluster_id), ACCOUNT),
                                              PENDING, "observe", T0, approved_by="sdk:alice")
    assert guard.scanner.scan(REGION).status == "ok"
    assert guard.scanner.actuator.audit.get(row.id).status == PENDING and mutations(guard.aws) == Counter()


def test_terminating_waits_for_the_instances_and_the_group(ec2, daemon, sandbox, monkeypatch) -> None:
    """In-progress until every instance is terminated and the group could be deleted; each check looks again."""
    cluster_id = "vmg-slowterm"
    ids, group = launch(ec2, cluster_id)
    with FaultProxy(sandbox.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        guard = daemon()
        register(guard.clusters, cluster_id, ids, group)
        # AWS takes a while to terminate: the instances stay shutting-down for a couple of checks
        proxy.rewrite("DescribeInstances", "<name>terminated</name>", "<name>shutting-down</name>")
        guard.keepalive.check(now=T0 + timedelta(seconds=65))
        [row] = audit_rows(guard)
        assert row.status == IN_PROGRESS and row.detail["waiting_for"] == sorted(ids)
        assert guard.clusters.get(cluster_id).state == TERMINATING
        guard.keepalive.check(now=T0 + timedelta(seconds=70))
        assert audit_rows(guard)[0].status == IN_PROGRESS
        # then the group is still held by the instances' network interfaces for a moment
        proxy.clear("DescribeInstances")
        proxy.fail("DeleteSecurityGroup", 400, "DependencyViolation", "resource sg-… has a dependent object", times=1)
        guard.keepalive.check(now=T0 + timedelta(seconds=75))
        assert audit_rows(guard)[0].status == IN_PROGRESS and group_exists(ec2, group)
        assert guard.clusters.get(cluster_id).state == TERMINATING
        guard.keepalive.check(now=T0 + timedelta(seconds=80))
    [row] = audit_rows(guard)
    assert row.status == DONE and not group_exists(ec2, group)
    assert mutations(guard.aws) == Counter({"ec2:TerminateInstances": 1, "ec2:DeleteSecurityGroup": 2})
    assert guard.clusters.get(cluster_id).state == TERMINATED


def test_a_group_that_stays_in_use_fails_the_action_after_a_while(ec2, daemon, sandbox, monkeypatch) -> None:
    cluster_id = "vmg-stuckgrp"
    ids, group = launch(ec2, cluster_id, workers=1)
    with FaultProxy(sandbox.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        guard = daemon()
        register(guard.clusters, cluster_id, ids, group)
        proxy.fail("DeleteSecurityGroup", 400, "DependencyViolation", "resource has a dependent object")
        guard.keepalive.check(now=T0 + timedelta(seconds=65))
        assert audit_rows(guard)[0].status == IN_PROGRESS
        guard.keepalive.check(now=T0 + timedelta(seconds=65 + 601))
    [row] = audit_rows(guard)
    assert row.status == FAILED and "still in use" in row.error and "delete the group by hand" in row.error
    assert set(states(ec2, ids).values()) == {"terminated"}
    cluster = guard.clusters.get(cluster_id)
    assert cluster.state == EXPIRED and "not terminated: security group" in cluster.reason


def test_enforce_keepalive_off_expires_but_never_terminates(ec2, daemon) -> None:
    cluster_id = "vmg-keepoff1"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon(mode="enforce", allowed_accounts=ACCOUNT, enforce_keepalive=False)
    register(guard.clusters, cluster_id, ids, group)
    leftover = "vmg-leftover"  # an intent committed while enforcement was still on
    left_ids, left_group = launch(ec2, leftover, workers=1)
    register(guard.clusters, leftover, left_ids, left_group)
    assert guard.clusters.expire(guard.clusters.get(leftover), "no heartbeat", T0 + timedelta(minutes=2))
    pending = guard.scanner.actuator.audit.record(guard.keepalive.intent(guard.clusters.get(leftover), ACCOUNT),
                                                  PENDING, "enforce", T0, approved_by="sdk:alice")

    report = guard.keepalive.check(now=T0 + timedelta(minutes=2))
    assert report.expired == [cluster_id]
    assert report.actions.results == [("keepalive", "terminate-cluster", "skipped-off")]
    cluster = guard.clusters.get(cluster_id)
    assert cluster.state == EXPIRED and cluster.reason.endswith("enforce_keepalive = false)")
    assert guard.scanner.actuator.audit.get(pending.id).status == SKIPPED
    assert [row.id for row in audit_rows(guard)] == [pending.id]
    assert set(states(ec2, ids + left_ids).values()) == {"running"} and mutations(guard.aws) == Counter()


def test_the_allow_lists_still_hold_when_set(ec2, daemon) -> None:
    cluster_id = "vmg-otheracc"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon(mode="enforce", allowed_accounts="111111111111")
    register(guard.clusters, cluster_id, ids, group)
    report = guard.keepalive.check(now=T0 + timedelta(minutes=2))
    assert report.actions.results == [("keepalive", "terminate-cluster", "skipped-not-allowed")]
    [row] = audit_rows(guard)
    assert row.status == SKIPPED and row.error == f"account {ACCOUNT} is not in allowed_accounts"
    assert set(states(ec2, ids).values()) == {"running"} and mutations(guard.aws) == Counter()
    assert guard.clusters.get(cluster_id).state == EXPIRED


@pytest.mark.parametrize("mode", ["observe", "enforce"])
def test_the_iam_policy_allows_exactly_the_keepalive_calls(ec2, mode: str) -> None:
    """The calls keepalive makes are allowed on what the SDK launched, refused on anything else or protected."""
    managed, protect = ("guard:managed", "true"), ("guard:protect", "true")
    policy = (observe_policy([], keepalive=True) if mode == "observe"
              else enforce_policy([], managed, protect, keepalive=True))
    instance = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0"
    group = f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0123456789abcdef0"
    sdk = {f"aws:ResourceTag/{key}": value for key, value in {**MANAGED, "vmguard:cluster": "vmg-abcdef"}.items()}
    for action, arn in (("ec2:TerminateInstances", instance), ("ec2:DeleteSecurityGroup", group)):
        assert allowed(policy, (action, arn, sdk))
        assert not allowed(policy, (action, arn, {}))
        assert not allowed(policy, (action, arn, sdk | {"aws:ResourceTag/guard:protect": "TRUE"}))
    assert not allowed(policy, ("ec2:TerminateInstances", group, sdk))  # each call on its own resource type
    for read in ("ec2:DescribeInstances", "ec2:DescribeSecurityGroups"):
        assert allowed(policy, (read, "*", {}))
    without = observe_policy([]) if mode == "observe" else enforce_policy([], managed, protect)
    assert not allowed(without, ("ec2:TerminateInstances", instance, sdk))


def test_the_scheduled_job_terminates_a_backdated_cluster_within_seconds(ec2, daemon) -> None:
    cluster_id = "vmg-schedule"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon(keepalive_check_interval="1s", api_token="admin-token-0123456789")
    guard.start_scheduler(first_scan_now=False)
    job = guard.scheduler.get_job("keepalive")
    assert job is not None and job.trigger.interval == timedelta(seconds=1)
    time.sleep(0.5)  # the daemon runs (its first check is done) when the cluster registers
    now = datetime.now(timezone.utc)
    register(guard.clusters, cluster_id, ids, group, now=now)
    time.sleep(1.5)
    assert guard.clusters.get(cluster_id).state == RUNNING  # heartbeat fresh: nothing happens
    guard.clusters.set_fields(cluster_id, last_heartbeat=now - timedelta(seconds=61))  # the laptop went away
    deadline = time.monotonic() + 15
    while guard.clusters.get(cluster_id).state != TERMINATED:
        assert time.monotonic() < deadline, guard.clusters.get(cluster_id).as_dict()
        time.sleep(0.1)
    assert set(states(ec2, ids).values()) == {"terminated"} and not group_exists(ec2, group)
    metrics = {f.name: f for f in text_string_to_metric_families(guard.metrics.render().decode())}
    done = [s for s in metrics["guard_actions"].samples if s.name == "guard_actions_total"
            and s.labels == {"rule": "keepalive", "action": "terminate-cluster", "result": "done"}]
    assert [s.value for s in done] == [1.0]
    clusters = {s.labels["state"]: s.value for s in metrics["guard_clusters"].samples}
    assert clusters["terminated"] == 1 and clusters["running"] == 0


# -- restarts and gaps: heartbeats the daemon could not receive never count against a cluster -----------------------


def test_after_a_restart_no_cluster_expires_before_a_full_keepalive(ec2, make_settings, registry: Registry) -> None:
    cluster_id = "vmg-restart1"
    ids, group = launch(ec2, cluster_id, workers=1)
    before = Daemon(make_settings(regions=[REGION]), registry, Aws())
    before.keepalive.check(now=T0 - timedelta(seconds=1))
    register(before.clusters, cluster_id, ids, group, keepalive=60, idle=600)
    before.shutdown()  # the daemon is down for an hour (an upgrade): the cluster's heartbeats reach nobody

    started = T0 + timedelta(hours=1)
    after = Daemon(make_settings(regions=[REGION]), registry, Aws())
    try:
        report = after.keepalive.check(now=started)  # its first check, right at start
        assert report.expired == [] and after.clusters.get(cluster_id).state == RUNNING
        shown = after.clusters.get(cluster_id).as_dict()
        assert datetime.fromisoformat(shown["expires_at"]) == started + timedelta(seconds=60)
        assert after.keepalive.check(now=started + timedelta(seconds=59)).expired == []

        after.clusters.heartbeat(cluster_id, Heartbeat(), started + timedelta(seconds=30))  # the SDK got through
        assert after.keepalive.check(now=started + timedelta(seconds=61)).expired == []
        report = after.keepalive.check(now=started + timedelta(seconds=91))  # and then fell silent for a keepalive
        assert report.expired == [cluster_id]
        assert set(states(ec2, ids).values()) <= {"shutting-down", "terminated"}
    finally:
        after.shutdown()


def test_after_a_gap_in_the_checks_no_cluster_expires_before_a_full_keepalive(ec2, daemon) -> None:
    cluster_id = "vmg-gap00001"
    ids, group = launch(ec2, cluster_id, workers=1)
    guard = daemon(keepalive_check_interval="1s")  # a gap: no successful check for 3 s of wall-clock time
    register(guard.clusters, cluster_id, ids, group, keepalive=60)
    assert guard.keepalive.check(now=T0 + timedelta(seconds=30)).expired == []
    time.sleep(guard.keepalive.gap_seconds + 0.2)  # the host was suspended, the database unreachable…
    resumed = T0 + timedelta(minutes=10)
    assert guard.keepalive.check(now=resumed).expired == []
    assert guard.clusters.get(cluster_id).deadline() == (resumed + timedelta(seconds=60), "keepalive")
    assert guard.keepalive.check(now=resumed + timedelta(seconds=61)).expired == [cluster_id]


def test_the_admin_token_survives_a_restart(make_settings, registry: Registry, database_url: str, serve,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARD_API_TOKEN", raising=False)
    first = Daemon(make_settings(regions=[REGION]), registry, Aws())
    token, generated = first.api_token, first.token_generated
    first.shutdown()
    second = Daemon(make_settings(regions=[REGION]), registry, Aws())
    try:
        assert generated is True and second.token_generated is False and second.api_token == token
        assert len(token) >= 24
        assert Path(database_url.removeprefix("sqlite:///")).stat().st_mode & 0o777 == 0o600  # it holds a credential
        with serve(second.app) as base:
            assert httpx.get(f"{base}/v1/clusters", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        second.shutdown()
    chosen = Daemon(make_settings(regions=[REGION], api_token="chosen-token-0123456789"), registry, Aws())
    try:
        assert chosen.api_token == "chosen-token-0123456789" and not chosen.token_stored  # GUARD_API_TOKEN wins
    finally:
        chosen.shutdown()
