"""guard.settings: GUARD_* environment variables over an optional guard.toml, one-line ConfigErrors."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from guard.rule import Registry, discover_rules
from guard.settings import ConfigError, Settings, load_settings

GUARD_TOML = """
mode = "dry-run"
regions = ["eu-west-1", "us-west-2"]
scan_interval = "5 minutes"
owner_tag = "team"

[rules.idle-vms]
window = "3h"
cpu_percent_max = 2.5

[rules.detached-volumes]
min_age = "2 days"
enabled = false
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GUARD_* variable and no ./guard.toml from the developer's machine leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("GUARD_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(scope="module")
def registry() -> Registry:
    return discover_rules()


def write_toml(tmp_path: Path, text: str = GUARD_TOML) -> Path:
    path = tmp_path / "guard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(registry: Registry) -> None:
    settings = load_settings(registry)
    assert settings.mode == "observe"
    assert settings.scan_interval == timedelta(seconds=60)
    assert settings.regions == ["us-east-1"]
    assert settings.database_url == "sqlite:///guard.db"
    assert settings.listen == "127.0.0.1:9464"
    assert settings.api_token is None
    assert settings.owner_tag == "owner"
    assert settings.protect_tag_pair == ("guard:protect", "true")
    assert settings.enabled_rules() == sorted(registry.rules)  # every installed rule is on by default
    assert settings.rule_configs["idle-vms"].window == timedelta(hours=1)
    assert settings.rule_configs["detached-volumes"].min_age == timedelta(hours=24)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_REGIONS", "us-east-1, us-west-2")
    monkeypatch.setenv("GUARD_MODE", "enforce")
    monkeypatch.setenv("GUARD_SCAN_INTERVAL", "2 minutes")
    monkeypatch.setenv("GUARD_DATABASE_URL", "postgresql://guard:hunter2@db.internal/guard")
    monkeypatch.setenv("GUARD_LISTEN", "0.0.0.0:9000")
    monkeypatch.setenv("GUARD_OWNER_TAG", "team")
    monkeypatch.setenv("GUARD_PROTECT_TAG", "keep=yes")
    monkeypatch.setenv("GUARD_ALLOWED_ACCOUNTS", "123456789012, 210987654321")
    monkeypatch.setenv("GUARD_ALLOWED_REGIONS", "us-west-2")
    monkeypatch.setenv("GUARD_RULES__IDLE_VMS__ACTION", "terminate")
    settings = load_settings(registry)
    assert settings.regions == ["us-east-1", "us-west-2"]
    assert settings.mode == "enforce"
    assert settings.allowed_accounts == ["123456789012", "210987654321"]
    assert settings.action_regions == ["us-west-2"]
    assert settings.rule_configs["idle-vms"].action == "terminate"
    assert settings.scan_interval == timedelta(minutes=2)
    assert settings.database_url == "postgresql://guard:hunter2@db.internal/guard"
    assert settings.listen == "0.0.0.0:9000"
    assert settings.owner_tag == "team"
    assert settings.protect_tag_pair == ("keep", "yes")


def test_duplicate_regions_are_collapsed(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_REGIONS", "eu-west-1,us-east-1,eu-west-1,")
    assert load_settings(registry).regions == ["eu-west-1", "us-east-1"]


def test_api_token_and_database_password_are_masked(monkeypatch: pytest.MonkeyPatch,
                                                    registry: Registry) -> None:
    monkeypatch.setenv("GUARD_API_TOKEN", "s3cr3t-token-0123456789")
    monkeypatch.setenv("GUARD_DATABASE_URL", "postgresql://guard:hunter2@db.internal/guard")
    settings = load_settings(registry)
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "s3cr3t-token-0123456789"
    masked = settings.masked()
    assert masked["api_token"] == "********"
    assert "hunter2" not in masked["database_url"] and "db.internal" in masked["database_url"]
    assert "s3cr3t-token-0123456789" not in repr(masked) and "hunter2" not in repr(masked)
    assert "s3cr3t-token-0123456789" not in repr(settings)
    assert masked["scan_interval"] == "1m"
    assert masked["rules"]["idle-vms"]["window"] == "1h"


def test_masked_without_token_is_none(registry: Registry) -> None:
    assert load_settings(registry).masked()["api_token"] is None


def test_rule_setting_from_environment(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_RULES__IDLE_VMS__WINDOW", "2h")
    monkeypatch.setenv("GUARD_RULES__DETACHED_VOLUMES__ENABLED", "false")
    settings = load_settings(registry)
    assert settings.rule_configs["idle-vms"].window == timedelta(hours=2)
    assert settings.rule_configs["idle-vms"].cpu_percent_max == 5.0  # untouched keys keep their defaults
    assert "idle-vms" in settings.enabled_rules() and "detached-volumes" not in settings.enabled_rules()


def test_toml_file_from_guard_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path)))
    settings = load_settings(registry)
    assert settings.mode == "dry-run"
    assert settings.regions == ["eu-west-1", "us-west-2"]
    assert settings.scan_interval == timedelta(minutes=5)
    assert settings.owner_tag == "team"
    idle = settings.rule_configs["idle-vms"]
    assert (idle.window, idle.cpu_percent_max) == (timedelta(hours=3), 2.5)
    assert settings.rule_configs["detached-volumes"].min_age == timedelta(days=2)
    assert "idle-vms" in settings.enabled_rules() and "detached-volumes" not in settings.enabled_rules()


def test_guard_toml_in_working_directory_is_read(clean_environment: Path, registry: Registry) -> None:
    write_toml(clean_environment, 'mode = "dry-run"\n')
    assert load_settings(registry).mode == "dry-run"


def test_environment_overrides_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path)))
    monkeypatch.setenv("GUARD_MODE", "observe")
    monkeypatch.setenv("GUARD_REGIONS", "ap-south-1")
    monkeypatch.setenv("GUARD_RULES__IDLE_VMS__WINDOW", "30m")
    settings = load_settings(registry)
    assert settings.mode == "observe"
    assert settings.regions == ["ap-south-1"]
    assert settings.scan_interval == timedelta(minutes=5)  # not overridden: from the file
    idle = settings.rule_configs["idle-vms"]
    assert idle.window == timedelta(minutes=30)
    assert idle.cpu_percent_max == 2.5  # the file's other key in the same section survives


def test_explicit_arguments_override_environment(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_MODE", "enforce")
    assert load_settings(registry, mode="dry-run").mode == "dry-run"


def test_missing_guard_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   registry: Registry) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("GUARD_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    message = str(info.value)
    assert "GUARD_CONFIG" in message and str(missing) in message and "\n" not in message


def test_malformed_toml_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path, "mode = \n")))
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("GUARD_SCAN_INTERVAL", "soon", "scan_interval"),
        ("GUARD_SCAN_INTERVAL", "0s", "scan_interval"),
        ("GUARD_MODE", "yolo", "mode"),
        ("GUARD_REGIONS", "us-east-1,Mars", "regions"),
        ("GUARD_REGIONS", " , ", "regions"),
        ("GUARD_LISTEN", "localhost", "listen"),
        ("GUARD_LISTEN", "127.0.0.1:99999", "listen"),
        ("GUARD_DATABASE_URL", "mysql://guard@db/guard", "database_url"),
        ("GUARD_DATABASE_URL", "not a url", "database_url"),
        ("GUARD_PROTECT_TAG", "guard:protect", "protect_tag"),
        ("GUARD_PROTECT_TAG", "=true", "protect_tag"),
        ("GUARD_RULES__IDLE_VMS__WINDOW", "soon", "rules.idle-vms.window"),
        ("GUARD_RULES__IDLE_VMS__CPU_PERCENT_MAX", "500", "rules.idle-vms.cpu_percent_max"),
        ("GUARD_RULES__DETACHED_VOLUMES__MIN_AGE", "-5", "rules.detached-volumes.min_age"),
    ],
)
def test_bad_value_is_one_line_naming_key_and_value(monkeypatch: pytest.MonkeyPatch, registry: Registry,
                                                    env: str, value: str, key: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key} = ")
    assert value.strip(" ,") in message
    assert env in message


def test_bad_value_in_toml_names_key_and_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path, '[rules.idle-vms]\nwindow = "forever"\n')))
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    message = str(info.value)
    assert "\n" not in message
    assert "rules.idle-vms.window" in message and "'forever'" in message


def test_unknown_rule_id(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_RULES__NO_SUCH_RULE__ENABLED", "false")
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    message = str(info.value)
    assert "\n" not in message
    assert "rules.no-such-rule" in message and "unknown rule id" in message
    assert "idle-vms" in message and "detached-volumes" in message  # says what is allowed


def test_unknown_rule_id_in_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path, "[rules.idle-gpus]\nenabled = true\n")))
    with pytest.raises(ConfigError, match=r"rules\.idle-gpus: unknown rule id"):
        load_settings(registry)


def test_unknown_rule_key_names_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        registry: Registry) -> None:
    monkeypatch.setenv("GUARD_CONFIG", str(write_toml(tmp_path, "[rules.idle-vms]\ncpu_max = 3\n")))
    with pytest.raises(ConfigError) as info:
        load_settings(registry)
    message = str(info.value)
    assert "\n" not in message
    assert "rules.idle-vms.cpu_max" in message and "unknown setting" in message
    assert "GUARD_RULES__IDLE_VMS__CPU_MAX" in message


def test_unknown_rule_key_names_the_value(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_RULES__IDLE_VMS__CPU_MAX", "3.5")
    with pytest.raises(ConfigError, match=r"rules\.idle-vms\.cpu_max.*3\.5"):
        load_settings(registry)


@pytest.mark.parametrize("value", ["9999999999 days", "99999999999999999999"])
def test_out_of_range_duration_is_a_config_error(monkeypatch: pytest.MonkeyPatch, registry: Registry,
                                                 value: str) -> None:
    monkeypatch.setenv("GUARD_SCAN_INTERVAL", value)
    with pytest.raises(ConfigError, match="scan_interval"):
        load_settings(registry)


def test_settings_without_registry_keep_rule_sections_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARD_RULES__IDLE_VMS__WINDOW", "2h")
    settings = Settings()
    assert settings.rules == {"idle-vms": {"window": "2h"}}
    assert settings.rule_configs == {}


def test_short_api_token_is_rejected(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_API_TOKEN", "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(registry)


def test_empty_api_token_means_unset(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_API_TOKEN", "")
    assert load_settings(registry).api_token is None


def test_misspelt_environment_variable_is_named_with_the_closest_setting(
        monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_MOD", "enforce")
    with pytest.raises(ConfigError, match="GUARD_MOD: unknown setting; did you mean GUARD_MODE"):
        load_settings(registry)


def test_webhook_url_is_checked_and_masked(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    monkeypatch.setenv("GUARD_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/very-secret")
    settings = load_settings(registry)
    assert settings.webhook_url.get_secret_value().endswith("very-secret")
    assert "very-secret" not in repr(settings.masked()) and settings.masked()["webhook_url"] == "********"
    monkeypatch.setenv("GUARD_WEBHOOK_URL", "hooks.slack.com/x")
    with pytest.raises(ConfigError, match="webhook_url = .*expected an http"):
        load_settings(registry)
