"""sdk.price_table: matching instance types and their $/hour per region, from the shipped catalog."""

from __future__ import annotations

import pytest

import sdk
from guard.pricing import default_catalog
from sdk.errors import SdkError
from sdk.prices import processor

CATALOG = default_catalog()
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]


def test_rows_match_the_shape_cheapest_first_with_every_regions_price() -> None:
    table = sdk.price_table(cpu=4, memory="16GiB", regions=REGIONS, limit=500, show=False)
    assert table.regions == tuple(REGIONS) and table.more == 0 and len(table.rows) > 20
    for row in table.rows:
        assert row.vcpus == 4 and row.memory_gib >= 16 and row.gpus == 0
        assert not row.instance_type.startswith("t") and "metal" not in row.instance_type
        assert row.hourly_usd == {region: CATALOG.hourly_usd(row.instance_type, region) for region in REGIONS}
    cheapest = [row.cheapest[1] for row in table.rows]
    assert cheapest == sorted(cheapest)
    assert {row.processor for row in table.rows} == {"Graviton", "AMD", "Intel"}  # ARM vs Intel vs AMD, one call


def test_arm_selects_the_architecture_and_none_shows_both() -> None:
    arm = sdk.price_table(cpu=2, regions=["us-west-2"], arm=True, limit=500, show=False)
    x86 = sdk.price_table(cpu=2, regions=["us-west-2"], arm=False, limit=500, show=False)
    both = sdk.price_table(cpu=2, regions=["us-west-2"], limit=500, show=False)
    assert {row.arch for row in arm.rows} == {"arm64"} and {row.arch for row in x86.rows} == {"x86_64"}
    assert len(both.rows) == len(arm.rows) + len(x86.rows)


def test_gpu_means_nvidia_gpus_as_for_clusters() -> None:
    table = sdk.price_table(gpu=1, regions=["us-east-1"], limit=500, show=False)
    assert table.rows and all(row.gpus == 1 for row in table.rows)
    names = {row.gpu_name for row in table.rows}
    assert "T4" in names and not any(name.startswith(("Inferentia", "Radeon", "Trainium")) for name in names)
    assert "g5g.xlarge" in {row.instance_type for row in table.rows}  # an ARM GPU when arm is not fixed


def test_limit_keeps_the_cheapest_and_says_how_many_more() -> None:
    full = sdk.price_table(cpu=[8, 16], memory="64GiB", regions="eu-west-1", limit=500, show=False)
    top = sdk.price_table(cpu=[8, 16], memory="64GiB", regions="eu-west-1", limit=3, show=False)
    assert top.rows == full.rows[:3] and top.more == len(full.rows) - 3
    text = str(top)
    assert "8-16 vCPU" in text and "eu-west-1" in text and f"{top.more} more match" in text
    assert top.rows[0].instance_type in text and f"{top.rows[0].hourly_usd['eu-west-1']:.4f}" in text


def test_a_type_not_sold_in_a_region_shows_a_dash() -> None:
    table = sdk.price_table(gpu=8, regions=["us-east-1", "af-south-1"], limit=500, show=False)
    missing = [row for row in table.rows if row.hourly_usd["af-south-1"] is None]
    assert missing and "—" in str(table)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"regions": ["us-east-1", "mars-north-1"]}, "unknown region 'mars-north-1'"),
    ({"regions": []}, "regions=[] names no region"),
    ({"cpu": 0}, "cpu=0 must be a number of vCPUs"),
    ({"memory": "lots"}, "memory"),
    ({"cpu": 1, "memory": "2TiB"}, "no instance type in the catalog has 1 vCPU, ≥ 2048 GiB"),
    ({"limit": 0}, "limit=0 must be a positive number"),
])
def test_bad_arguments_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SdkError) as raised:
        sdk.price_table(show=False, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("name", "arch", "expected"), [
    ("m7g.large", "arm64", "Graviton"), ("m7a.large", "x86_64", "AMD"), ("r5ad.xlarge", "x86_64", "AMD"),
    ("c6a.large", "x86_64", "AMD"), ("m7i.large", "x86_64", "Intel"), ("m5.large", "x86_64", "Intel"),
    ("g4dn.xlarge", "x86_64", "Intel"),
])
def test_processor_from_the_family_name(name: str, arch: str, expected: str) -> None:
    assert processor(name, arch) == expected


def test_the_table_is_printed_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    sdk.price_table(cpu=2, regions=["us-east-1"], limit=2)
    assert "on-demand $/hour" in capsys.readouterr().out
