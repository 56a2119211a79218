"""The ``launch_sources`` collector: every launch template version and launch configuration of the region, with
the EBS snapshots their block-device mappings name.

An Auto Scaling group, an EC2 fleet or a spot fleet launches from ``$Default``, ``$Latest`` or a pinned version
of a launch template, or from a launch configuration: a snapshot any of them names is in use. Every version is
read, not only the ones groups pin today (what a fleet request or a script pins is not listed anywhere), in a
fixed number of paged calls for the common case: one DescribeLaunchTemplateVersions for the ``$Latest`` and
``$Default`` versions of every template at once, then one more (paged) only for a template that has versions
besides those two, and DescribeLaunchConfigurations at its page maximum.
"""

from __future__ import annotations

from collections.abc import Iterable

from guard.aws import Aws
from guard.model import LaunchSource

TEMPLATE_VERSION_PAGE_SIZE = 200
LAUNCH_CONFIGURATION_PAGE_SIZE = 100


def _snapshot_ids(mappings: Iterable[dict]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m["Ebs"]["SnapshotId"] for m in mappings if (m.get("Ebs") or {}).get("SnapshotId")))


def _version(raw: dict) -> LaunchSource:
    return LaunchSource(kind="launch-template", id=raw["LaunchTemplateId"], name=raw.get("LaunchTemplateName", ""),
                        version=int(raw["VersionNumber"]),
                        snapshot_ids=_snapshot_ids(raw.get("LaunchTemplateData", {}).get("BlockDeviceMappings", [])))


def collect_launch_sources(aws: Aws, region: str) -> tuple[LaunchSource, ...]:
    ec2 = aws.client("ec2", region)
    versions = ec2.get_paginator("describe_launch_template_versions")
    found: dict[tuple[str, str, int | None], LaunchSource] = {}
    defaults: dict[str, int] = {}
    for page in versions.paginate(Versions=["$Latest", "$Default"],
                                  PaginationConfig={"PageSize": TEMPLATE_VERSION_PAGE_SIZE}):
        for raw in page.get("LaunchTemplateVersions", []):
            source = _version(raw)
            found[(source.kind, source.id, source.version)] = source
            if raw.get("DefaultVersion"):
                defaults[source.id] = source.version
    latest: dict[str, int] = {}
    for _, template_id, version in found:
        latest[template_id] = max(version or 0, latest.get(template_id, 0))
    for template_id, newest in sorted(latest.items()):
        # versions are numbered from 1; deleted ones leave gaps, so "more than these two" is an upper bound
        if set(range(1, newest + 1)) <= {newest, defaults.get(template_id, newest)}:
            continue
        for page in versions.paginate(LaunchTemplateId=template_id,
                                      PaginationConfig={"PageSize": TEMPLATE_VERSION_PAGE_SIZE}):
            for raw in page.get("LaunchTemplateVersions", []):
                source = _version(raw)
                found[(source.kind, source.id, source.version)] = source
    configurations = aws.client("autoscaling", region).get_paginator("describe_launch_configurations")
    for page in configurations.paginate(PaginationConfig={"PageSize": LAUNCH_CONFIGURATION_PAGE_SIZE}):
        for raw in page.get("LaunchConfigurations", []):
            name = raw["LaunchConfigurationName"]
            found[("launch-configuration", name, None)] = LaunchSource(
                kind="launch-configuration", id=name, name=name, version=None,
                snapshot_ids=_snapshot_ids(raw.get("BlockDeviceMappings", [])))
    return tuple(found.values())
