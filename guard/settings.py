"""The daemon's configuration: ``GUARD_*`` environment variables over an optional ``guard.toml``.

Precedence: explicit arguments > environment > TOML file (``GUARD_CONFIG``, else ``./guard.toml`` if present)
> defaults. Per-rule thresholds live in ``[rules.<id>]`` or ``GUARD_RULES__<ID>__<KEY>``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from guard.durations import Duration
from guard.rule import Registry, RuleConfig

Mode = Literal["observe", "dry-run", "enforce"]
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
_OWNER = re.compile(r"[A-Za-z0-9._@+\-]{1,256}")
SECRET_SETTINGS = frozenset({"api_token", "api_tokens", "webhook_url"})
"""Settings whose value is never printed, in check-config nor in an error message."""


class Retention(BaseModel):
    """How long the database keeps history (``[retention]``, ``GUARD_RETENTION__SCANS=…``); the actor prunes hourly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scans: Duration = Field(timedelta(days=14), description="scan records older than this are deleted")
    findings: Duration = Field(timedelta(days=180), description="resolved findings older than this are deleted")
    actions: Duration = Field(timedelta(days=180), description=(
        "finished actions (done, failed, skipped, cancelled) older than this are deleted; never the audit trail of "
        "a resource that still has an open action"))

    @field_validator("scans", "findings", "actions")
    @classmethod
    def _at_least_an_hour(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=1):
            raise ValueError("expected at least 1 hour, e.g. '14 days'")
        return value


class ConfigError(Exception):
    """A setting is wrong; the message is one line saying which, its value and what is allowed."""


def config_file() -> Path | None:
    explicit = os.environ.get("GUARD_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"GUARD_CONFIG = {explicit!r}: no such file; point it at a guard.toml or unset it")
        return path
    default = Path("guard.toml")
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Everything the daemon can be told."""

    model_config = SettingsConfigDict(
        env_prefix="GUARD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    regions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["us-east-1"], description="AWS regions to scan (comma-separated in GUARD_REGIONS)")
    scan_interval: Duration = Field(timedelta(seconds=60), description="time between two scans of a region")
    mode: Mode = Field("observe", description="observe (no mutating AWS call), dry-run, or enforce")
    database_url: str = Field("sqlite:///guard.db", description="SQLAlchemy URL: sqlite:///path or postgresql://…")
    listen: str = Field("127.0.0.1:9464", description="host:port of the HTTP server (/metrics, /v1/…)")
    metrics_refresh: Duration = Field(timedelta(minutes=5), description=(
        "how often CloudWatch series are fetched again (GetMetricData bills $0.01 per 1,000 metrics); "
        "scans in between reuse them"))
    api_token: SecretStr | None = Field(None, description=(
        "admin bearer token for /v1/… (sees and does everything); if unset, one is generated on the first start and "
        "kept in the database, so it stays the same across restarts"))
    api_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict, description=(
        "per-owner bearer tokens, owner=token pairs (comma-separated in GUARD_API_TOKENS): an owner's token registers, "
        "heartbeats, closes and lists only that owner's clusters, and reads /v1 like the admin token"))
    webhook_url: SecretStr | None = Field(None, description=(
        "Slack-compatible incoming webhook: one message per scan that opens findings or starts failing"))
    owner_tag: str = Field("owner", description="tag whose value names a resource's owner")
    protect_tag: str = Field("guard:protect=true", description="key=value tag that exempts a resource")
    managed_tag: str = Field("guard:managed=true", description=(
        "key=value tag of resources the SDK launched; destructive actions on others need the rule's act_on_unmanaged"))
    allowed_accounts: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "account ids the daemon may change (comma-separated); enforce mode needs at least one"))
    allowed_regions: Annotated[list[str] | None, NoDecode] = Field(None, description=(
        "regions the daemon may change (comma-separated); default: every scanned region"))
    max_actions_per_cycle: int = Field(5, ge=0, description="at most this many actions per scan of a region")
    max_actions_per_hour: int = Field(20, ge=0, description="at most this many actions in any hour, all regions")
    breaker_failures: int = Field(3, ge=1, description="this many failed actions in a row stop all actions ...")
    breaker_cooldown: Duration = Field(timedelta(hours=1), description="... for this long after the last failure")
    min_resource_age: Duration = Field(timedelta(hours=6), description="resources younger than this are never acted on")
    snapshot_timeout: Duration = Field(timedelta(hours=6), description=(
        "snapshot-then-delete gives up (keeping the volume) when its snapshot has not completed by then"))
    enforce_keepalive: bool = Field(True, description=(
        "terminate a registered cluster whose heartbeats stopped (or that idled) past what its owner asked for at "
        "launch, in every mode — still gated by protection and the audit trail"))
    keepalive_check_interval: Duration = Field(timedelta(seconds=5), description=(
        "how often registered clusters' keepalives are checked"))
    lease_ttl: Duration = Field(timedelta(seconds=30), description=(
        "one process per database acts (the lease holder); another takes over this long after the holder is gone"))
    retention: Retention = Field(default_factory=Retention, description=(
        "[retention] scans / findings / actions: how long history is kept"))
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-rule sections [rules.<id>]")

    _rule_configs: dict[str, RuleConfig] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("regions", "allowed_regions", "allowed_accounts", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("regions", "allowed_regions")
    @classmethod
    def _check_regions(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("expected at least one region, e.g. 'us-east-1,us-west-2'")
        for region in value:
            if not _REGION.match(region):
                raise ValueError(f"{region!r} is not an AWS region name; expected names like 'us-east-1'")
        return list(dict.fromkeys(value))

    @field_validator("allowed_accounts")
    @classmethod
    def _check_accounts(cls, value: list[str]) -> list[str]:
        for account in value:
            if not re.fullmatch(r"\d{12}", account):
                raise ValueError(f"{account!r} is not an AWS account id; expected 12 digits, e.g. '123456789012'")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _enforce_needs_accounts(self) -> Settings:
        if self.mode == "enforce" and not self.allowed_accounts:
            raise ValueError("mode = 'enforce' changes only listed accounts: set allowed_accounts "
                             "(GUARD_ALLOWED_ACCOUNTS=123456789012) to the account ids the daemon may change")
        return self

    @field_validator("scan_interval")
    @classmethod
    def _positive_interval(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("expected at least 1 second, e.g. '60s'")
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. '127.0.0.1:9464' or '0.0.0.0:9464'")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("expected a URL like 'sqlite:///guard.db' or 'postgresql://user@host/db'") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("expected a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _check_token(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # empty means unset: a random token is made and printed
        secret = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if len(secret) < 16:
            raise ValueError("use at least 16 characters, e.g. the output of `openssl rand -hex 16`")
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_owner_tokens(cls, value: Any) -> Any:
        """``alice=<token>,bob=<token>`` (or a TOML table); messages name the owner or entry, never a token."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return {}
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for number, entry in enumerate(value.split(","), start=1):
                if not entry.strip():
                    continue
                owner, sep, token = entry.partition("=")
                if not sep or not owner.strip():
                    raise ValueError(f"entry {number} is not owner=token; expected comma-separated owner=token pairs, "
                                     "e.g. 'alice=<token>,bob=<token>'")
                if owner.strip() in pairs:
                    raise ValueError(f"owner {owner.strip()!r} is listed twice; give each owner one token")
                pairs[owner.strip()] = token.strip()
            value = pairs
        if not isinstance(value, Mapping):
            raise ValueError("expected owner=token pairs, e.g. 'alice=<token>,bob=<token>' or a TOML table")
        tokens: dict[str, str] = {}
        for owner, token in value.items():
            owner = str(owner).strip()
            secret = token.get_secret_value() if isinstance(token, SecretStr) else token
            if not isinstance(secret, str):
                raise ValueError(f"the token of owner {owner!r} must be a string")
            if not _OWNER.fullmatch(owner):
                raise ValueError(f"owner {owner!r} is not a usable owner name: use letters, digits and . _ @ + - "
                                 "(as in the owner tag), at most 256 characters")
            if len(secret.strip()) < 16:
                raise ValueError(f"the token of owner {owner!r} is too short: use at least 16 characters, "
                                 "e.g. the output of `openssl rand -hex 16`")
            tokens[owner] = secret.strip()
        if len(set(tokens.values())) < len(tokens):
            raise ValueError("two owners share a token: each owner needs its own (the token names the owner)")
        return tokens

    @model_validator(mode="after")
    def _owner_tokens_differ_from_admin(self) -> Settings:
        if self.api_token is not None and any(
                token.get_secret_value() == self.api_token.get_secret_value() for token in self.api_tokens.values()):
            raise ValueError("api_tokens: an owner's token equals api_token (the admin token); give owners their own "
                             "tokens (GUARD_API_TOKENS)")
        return self

    @field_validator("keepalive_check_interval")
    @classmethod
    def _check_keepalive_interval(cls, value: timedelta) -> timedelta:
        if not 1 <= value.total_seconds() <= 30:
            raise ValueError("expected between 1 and 30 seconds (a cluster is terminated within 60s of its expiry), "
                             "e.g. '5s'")
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _check_lease_ttl(cls, value: timedelta) -> timedelta:
        if not 1 <= value.total_seconds() <= 600:
            raise ValueError("expected between 1 second and 10 minutes, e.g. '30s'")
        return value

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _check_webhook(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        url = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("expected an http(s) URL, e.g. https://hooks.slack.com/services/…")
        return value

    @field_validator("protect_tag", "managed_tag")
    @classmethod
    def _check_tag_pair(cls, value: str, info) -> str:
        key, sep, tag_value = value.partition("=")
        if not sep or not key or not tag_value:
            example = "guard:protect=true" if info.field_name == "protect_tag" else "guard:managed=true"
            raise ValueError(f"expected key=value, e.g. '{example}'")
        return value

    @field_validator("rules", mode="before")
    @classmethod
    def _normalise_rule_ids(cls, value: Any) -> Any:
        """Environment names can't hold '-': GUARD_RULES__IDLE_VMS__… configures rule 'idle-vms'."""
        if not isinstance(value, Mapping):
            return value
        merged: dict[str, dict[str, Any]] = {}
        for rule_id, section in value.items():
            key = str(rule_id).lower().replace("_", "-")
            if not isinstance(section, Mapping):
                raise ValueError(f"[rules.{key}] must be a table of settings, e.g. enabled = false")
            merged.setdefault(key, {}).update({str(k).lower(): v for k, v in section.items()})
        return merged

    @property
    def protect_tag_pair(self) -> tuple[str, str]:
        key, _, value = self.protect_tag.partition("=")
        return key, value

    @property
    def managed_tag_pair(self) -> tuple[str, str]:
        key, _, value = self.managed_tag.partition("=")
        return key, value

    @property
    def action_regions(self) -> list[str]:
        """The regions the daemon may change: ``allowed_regions``, or every scanned region."""
        return self.allowed_regions if self.allowed_regions is not None else list(self.regions)

    def resolve_rules(self, registry: Registry) -> dict[str, RuleConfig]:
        """Validate every [rules.<id>] section against its rule; unknown ids and bad values raise ConfigError."""
        unknown = sorted(set(self.rules) - set(registry.rules))
        if unknown:
            raise ConfigError(f"rules.{unknown[0]}: unknown rule id; known rules: {', '.join(registry.rules)}")
        configs: dict[str, RuleConfig] = {}
        for rule_id, cls in registry.rules.items():
            try:
                configs[rule_id] = cls.Config.model_validate(self.rules.get(rule_id, {}))
            except ValidationError as exc:
                section = self.rules.get(rule_id)
                raise ConfigError(describe_error(exc, prefix=f"rules.{rule_id}", section=section)) from None
            offered = ("notify", *cls.actions)
            if configs[rule_id].action not in offered:
                raise ConfigError(f"rules.{rule_id}.action = {configs[rule_id].action!r}: expected one of "
                                  f"{', '.join(offered)} (set via GUARD_RULES__{rule_id.upper().replace('-', '_')}"
                                  "__ACTION or guard.toml)")
        self._rule_configs = configs
        return configs

    @property
    def rule_configs(self) -> dict[str, RuleConfig]:
        return self._rule_configs

    def enabled_rules(self) -> list[str]:
        return [rule_id for rule_id, config in self._rule_configs.items() if config.enabled]

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        from sqlalchemy.engine import make_url

        data = self.model_dump(mode="json", exclude={"rules"})
        data["api_token"] = "********" if self.api_token else None
        data["api_tokens"] = {owner: "********" for owner in self.api_tokens}
        data["webhook_url"] = "********" if self.webhook_url else None
        data["database_url"] = make_url(self.database_url).render_as_string(hide_password=True)
        data["rules"] = {rule_id: config.model_dump(mode="json") for rule_id, config in self._rule_configs.items()}
        return data


def describe_error(exc: ValidationError, prefix: str = "", section: Mapping[str, Any] | None = None) -> str:
    """One line for the first error: the key (as setting and env name), its value, and what is allowed."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if not loc and not prefix:  # a check across settings: its message names them
        return error["msg"].removeprefix("Value error, ")
    key = ".".join([prefix, *loc] if prefix else loc)
    value = error.get("input")
    if section is not None and loc and loc[0] in section:
        value = section[loc[0]]
    if not prefix and loc and loc[0] in SECRET_SETTINGS:
        value = "********"
    env_name = "GUARD_" + key.upper().replace(".", "__").replace("-", "_")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "literal_error":
        message = "expected " + message.removeprefix("Input should be ")
    elif error["type"] == "extra_forbidden":
        return (f"{key} = {value!r}: unknown setting; `guard check-config` lists the settings that exist "
                f"(set via {env_name} or guard.toml)")
    return f"{key} = {value!r}: {message} (set via {env_name} or guard.toml)"


def _check_environment_names() -> None:
    """A misspelt GUARD_* variable would be silently ignored: name it, and the closest real one."""
    known = {f"GUARD_{name.upper()}" for name in Settings.model_fields} | {"GUARD_CONFIG"}
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("GUARD_") or upper in known or upper.startswith("GUARD_RULES__"):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(known))}"
        raise ConfigError(f"{name}: unknown setting{hint}")


def load_settings(registry: Registry, **overrides: Any) -> Settings:
    """Settings from the environment and guard.toml, with every rule section validated; raises ConfigError."""
    _check_environment_names()
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    except ValueError as exc:  # a malformed TOML file or env value the source could not decode
        raise ConfigError(f"configuration could not be read: {exc}") from None
    settings.resolve_rules(registry)
    return settings
