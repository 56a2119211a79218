"""guard.rule: rules are discovered through the ``guard.rules`` entry points and document themselves."""

from __future__ import annotations

import pytest

from guard.rule import (
    ENTRY_POINT_GROUP,
    SNAPSHOT_PARTS,
    Rule,
    RuleConfig,
    discover_rules,
    rule_doc,
    thresholds_doc,
)
from rules.detached_volumes import DetachedVolumes
from rules.idle_vms import IdleVMs

REGISTRY = discover_rules()
RULES = sorted(REGISTRY.rules.items())
SECTIONS = ("What it detects", "Why it costs money", "Example", "Fix")


def test_entry_point_group_name() -> None:
    assert ENTRY_POINT_GROUP == "guard.rules"


def test_builtin_rules_are_discovered_through_entry_points() -> None:
    assert REGISTRY.errors == {}
    assert {"idle-vms", "detached-volumes"} <= set(REGISTRY.rules)
    assert REGISTRY.rules["idle-vms"] is IdleVMs
    assert REGISTRY.rules["detached-volumes"] is DetachedVolumes
    assert list(REGISTRY.rules) == sorted(REGISTRY.rules)


@pytest.mark.parametrize(("rule_id", "cls"), RULES, ids=[rule_id for rule_id, _ in RULES])
def test_rule_docstring_has_summary_and_four_sections(rule_id: str, cls: type[Rule]) -> None:
    doc = rule_doc(cls)
    assert doc["summary"] and not doc["summary"].startswith(SECTIONS)
    for section in SECTIONS:
        assert section in doc, f"{rule_id}: docstring lacks '{section}'"
        assert len(doc[section]) > 20, f"{rule_id}: '{section}' is empty"
        assert "\n" not in doc[section]
    assert set(doc) == {"summary", *SECTIONS}


@pytest.mark.parametrize(("rule_id", "cls"), RULES, ids=[rule_id for rule_id, _ in RULES])
def test_rule_declares_its_contract(rule_id: str, cls: type[Rule]) -> None:
    assert issubclass(cls, Rule)
    assert cls.id == rule_id
    assert cls.resource_type
    assert isinstance(cls.inputs, str) and cls.inputs.strip()
    assert isinstance(cls.waste_formula, str) and cls.waste_formula.strip()
    assert isinstance(cls.suggested_action, str) and cls.suggested_action.strip()
    assert isinstance(cls.iam_permissions, tuple) and cls.iam_permissions
    assert all(":" in permission for permission in cls.iam_permissions)
    assert cls.needs and set(cls.needs) <= SNAPSHOT_PARTS
    assert issubclass(cls.Config, RuleConfig)
    assert cls.Config().enabled is True


def test_builtin_rule_specifics() -> None:
    assert IdleVMs.needs == frozenset({"instances", "metrics"})
    assert DetachedVolumes.needs == frozenset({"volumes"})
    assert "cloudwatch:GetMetricData" in IdleVMs.iam_permissions
    assert "ec2:DescribeVolumes" in DetachedVolumes.iam_permissions
    assert (IdleVMs.suggested_action, DetachedVolumes.suggested_action) == ("stop", "snapshot-then-delete")


def test_rule_configs_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError, match="cpu_max"):
        IdleVMs.Config.model_validate({"cpu_max": 3})


def test_thresholds_doc_lists_defaults_without_enabled() -> None:
    text = thresholds_doc(IdleVMs)
    assert "`window` = '1h'" in text and "`cpu_percent_max` = 5.0" in text
    assert "enabled" not in text
    assert "`min_age` = '1d'" in thresholds_doc(DetachedVolumes)


def test_rule_doc_parses_a_minimal_docstring() -> None:
    class Demo(Rule):
        """Short summary.

        What it detects
            Things
            on two lines.
        Why it costs money
            Money.
        Example
            An example.
        Fix
            Fix it.
        """

    assert rule_doc(Demo) == {"summary": "Short summary.", "What it detects": "Things on two lines.",
                              "Why it costs money": "Money.", "Example": "An example.", "Fix": "Fix it."}
