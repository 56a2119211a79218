"""The README's rule reference is generated from the rules; every rule ships with its own test file."""

from __future__ import annotations

from pathlib import Path

from guard.docs import current_rules_block, rules_markdown
from guard.rule import discover_rules

ROOT = Path(__file__).resolve().parents[2]


def test_readme_rule_table_matches_the_rules() -> None:
    readme = (ROOT / "README.md").read_text()
    assert current_rules_block(readme) == rules_markdown(discover_rules()), (
        "README.md's rule reference is stale: regenerate it with `guard rules --format markdown`")


def test_every_rule_is_in_the_readme_table_with_its_iam_permissions() -> None:
    block = current_rules_block((ROOT / "README.md").read_text())
    for rule_id, cls in discover_rules().rules.items():
        row = next(line for line in block.splitlines() if line.startswith(f"| `{rule_id}` |"))
        assert all(f"`{permission}`" in row for permission in cls.iam_permissions)


def test_every_rule_has_its_own_file_and_test_file() -> None:
    for rule_id, cls in discover_rules().rules.items():
        module = rule_id.replace("-", "_")
        assert cls.__module__ == f"rules.{module}", f"{rule_id} must live in rules/{module}.py"
        assert (ROOT / "tests" / "unit" / f"test_rule_{module}.py").is_file(), f"{rule_id} has no test file"
