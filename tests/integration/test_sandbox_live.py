"""A long-running sandbox keeps its instances' series going, so idle stays idle as the window moves on."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from guard.sandbox import LiveMetrics, SandboxServer, seed_team_account


def test_live_metrics_keep_the_window_filled(sandbox: SandboxServer, make_scanner) -> None:
    sandbox.reset()
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1, minutes=5)
    truth = seed_team_account(sandbox.endpoint_url, now=an_hour_ago)
    scanner = make_scanner(regions=["us-east-1"])

    stale = scanner.scan("us-east-1")
    assert stale.evaluations["idle-vms"].findings == ()
    idle = {key[2] for key in truth.expected("idle-vms") if key[1] == "us-east-1"}
    assert idle <= stale.evaluations["idle-vms"].undetermined

    live = LiveMetrics(sandbox.endpoint_url, truth)
    assert live.feed() >= 12
    assert live.feed() == 0  # nothing new until the next period starts
    fresh = scanner.scan("us-east-1")
    found = {f.resource_id for f in fresh.evaluations["idle-vms"].findings}
    young = {vm.instance_id for vm in truth.instances if vm.region == "us-east-1" and vm.profile == "young"}
    assert found == idle | young  # an hour later the young idle instance has a full window too
