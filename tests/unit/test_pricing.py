"""guard.pricing: the shipped EC2 catalog and EBS list prices; unknown means None, never $0."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from guard.pricing import EBS_USD_PER_GB_MONTH, HOURS_PER_MONTH, PriceCatalog, default_catalog


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return default_catalog()


# Values read from guard/data/aws-ec2-prices.csv
@pytest.mark.parametrize(
    ("instance_type", "region", "usd"),
    [
        ("m5.large", "us-east-1", 0.096),
        ("m5.large", "eu-west-1", 0.107),
        ("g5.xlarge", "us-east-1", 1.006),
        ("g5.12xlarge", "us-east-1", 5.672),
        ("t3.micro", "us-west-2", 0.0104),
        ("p3.2xlarge", "eu-west-1", 3.305),
        ("a1.2xlarge", "ap-south-1", 0.204),
        ("p4d.24xlarge", "us-east-1", 21.957642),
    ],
)
def test_known_on_demand_prices(catalog: PriceCatalog, instance_type: str, region: str, usd: float) -> None:
    assert catalog.hourly_usd(instance_type, region) == pytest.approx(usd)


def test_catalog_row_details(catalog: PriceCatalog) -> None:
    g5 = catalog.info("g5.xlarge", "us-east-1")
    assert g5 is not None
    assert (g5.arch, g5.vcpus, g5.memory_gib, g5.gpu_name, g5.gpu_count) == ("x86_64", 4, 16, "A10G", 1)
    assert g5.spot_usd_per_hour_min == pytest.approx(0.4246)
    graviton = catalog.info("c7g.large", "us-east-1")
    assert graviton is not None and graviton.arch == "arm64" and graviton.gpu_name is None
    no_spot = catalog.info("c6id.metal", "eu-south-1")
    assert no_spot is not None and no_spot.spot_usd_per_hour_min is None
    assert no_spot.on_demand_usd_per_hour == pytest.approx(7.6608)


def test_info_without_region_finds_the_type_anywhere(catalog: PriceCatalog) -> None:
    info = catalog.info("m5.large")
    assert info is not None and info.instance_type == "m5.large"
    assert catalog.info("zz9.mega") is None


@pytest.mark.parametrize(
    ("instance_type", "region"),
    [("zz9.mega", "us-east-1"), ("m5.large", "xx-moon-1"), ("", ""), ("M5.LARGE", "us-east-1")],
)
def test_unknown_type_or_region_is_none_not_zero(catalog: PriceCatalog, instance_type: str,
                                                 region: str) -> None:
    assert catalog.hourly_usd(instance_type, region) is None
    assert catalog.info(instance_type, region) is None


def test_every_csv_row_is_in_the_catalog_with_a_positive_price(catalog: PriceCatalog) -> None:
    # "unknown" is None; a $0 row would silently hide waste
    text = resources.files("guard").joinpath("data/aws-ec2-prices.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) > 10_000
    for row in rows:
        price = catalog.hourly_usd(row["instance_type"], row["region"])
        assert price == float(row["on_demand_usd_per_hour"]) and price > 0


def test_regions(catalog: PriceCatalog) -> None:
    assert {"us-east-1", "us-west-2", "eu-west-1", "ap-south-1"} <= catalog.regions
    assert "xx-moon-1" not in catalog.regions


@pytest.mark.parametrize(
    ("instance_type", "gpu"),
    [("g5.xlarge", True), ("p3.2xlarge", True), ("p4d.24xlarge", True), ("m5.large", False),
     ("t3.micro", False), ("zz9.mega", False)],
)
def test_is_gpu(catalog: PriceCatalog, instance_type: str, gpu: bool) -> None:
    assert catalog.is_gpu(instance_type) is gpu


def test_hours_per_month() -> None:
    assert HOURS_PER_MONTH == 730


@pytest.mark.parametrize(("volume_type", "per_gb_month"), [("gp3", 0.08), ("gp2", 0.10), ("io1", 0.125),
                                                            ("st1", 0.045), ("sc1", 0.015)])
def test_volume_hourly_formula(catalog: PriceCatalog, volume_type: str, per_gb_month: float) -> None:
    assert EBS_USD_PER_GB_MONTH[volume_type] == per_gb_month
    hourly = catalog.volume_hourly_usd(volume_type, 1000, "us-east-1")
    assert hourly == pytest.approx(1000 * per_gb_month / 730)
    assert hourly * HOURS_PER_MONTH == pytest.approx(1000 * per_gb_month)


def test_volume_unknown_type_or_region_is_none(catalog: PriceCatalog) -> None:
    assert catalog.volume_hourly_usd("gp9", 100, "us-east-1") is None
    assert catalog.volume_hourly_usd("gp3", 100, "xx-moon-1") is None
    assert catalog.volume_hourly_usd("gp3", 0, "us-east-1") == 0


def test_from_csv_text_parses_blank_gpu_and_spot_columns() -> None:
    text = (
        "instance_type,region,arch,vcpus,memory_gib,gpu_name,gpu_count,on_demand_usd_per_hour,spot_usd_per_hour_min\n"
        "x1.tiny,us-east-1,arm64,1,0.5,,,0.01,\n"
        "x1.gpu,us-east-1,x86_64,8,32,T4,1.0,0.5,0.2\n"
    )
    catalog = PriceCatalog.from_csv_text(text)
    assert catalog.hourly_usd("x1.tiny", "us-east-1") == 0.01
    assert catalog.info("x1.tiny", "us-east-1").spot_usd_per_hour_min is None
    assert catalog.is_gpu("x1.gpu") and not catalog.is_gpu("x1.tiny")
    assert catalog.regions == frozenset({"us-east-1"})


def test_default_catalog_is_loaded_once() -> None:
    assert default_catalog() is default_catalog()
