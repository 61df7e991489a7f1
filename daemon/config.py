"""Settings: one TOML file parsed once into frozen, typed settings.

Environment variables ``POSTD_<SECTION>_<KEY>`` override scalar keys of the file (for secrets:
``POSTD_DATABASE_URL``, ``POSTD_SECURITY_SECRET_KEY``...). Every error names its key, so a bad
config fails at start with one line. ``config.example.toml`` documents every key; a test keeps the
two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from daemon.errors import ConfigError

PLATFORMS = (
    "facebook",
    "instagram",
    "linkedin",
    "tiktok",
    "twitter",
    "youtube",
    "mastodon",
    "bluesky",
    "sandbox",
)

# Defaults from the API document's guardrail table (FB/IG/LN/TT/TW) and conservative values for
# platforms without a row. Ceilings are hard: an operator may lower a limit freely, never raise it
# past these.
DEFAULT_PAGE_LIMITS: dict[str, tuple[int, int]] = {
    "facebook": (10, 40),
    "instagram": (8, 30),
    "linkedin": (3, 15),
    "tiktok": (10, 50),
    "twitter": (50, 300),
    "youtube": (3, 10),
    "mastodon": (10, 50),
    "bluesky": (10, 50),
    "sandbox": (10, 40),
}
CEILING_PAGE_LIMITS: dict[str, tuple[int, int]] = {
    "facebook": (25, 100),
    "instagram": (25, 50),
    "linkedin": (10, 50),
    "tiktok": (15, 100),
    "twitter": (100, 600),
    "youtube": (10, 50),
    "mastodon": (30, 300),
    "bluesky": (30, 300),
    "sandbox": (100_000, 1_000_000),
}
CEILING_BRAND_PER_24H = 2_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    bind: str = "127.0.0.1:8787"
    # Where browsers reach this daemon: OAuth redirect URIs are <public_url>/oauth/callback/<name>.
    public_url: str = "http://127.0.0.1:8787"

    @field_validator("bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8787")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("expected an http(s) URL, e.g. https://postd.example.com")
        return value.rstrip("/")

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


class DatabaseSettings(_Section):
    url: str = Field(default="sqlite:///./postd.db", repr=False)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value


class SchedulingSettings(_Section):
    min_lead_seconds: int = Field(default=600, ge=0)
    max_horizon_days: int = Field(default=75, ge=1, le=3650)
    catch_up_seconds: int = Field(default=21_600, ge=0)
    sweep_seconds: float = Field(default=30, gt=0, le=3600)
    lease_seconds: float = Field(default=120, gt=0)


class DispatchSettings(_Section):
    batch_size: int = Field(default=200, ge=1, le=5000)
    concurrency: int = Field(default=32, ge=1, le=1024)
    shutdown_grace_seconds: float = Field(default=20, ge=0)
    publish_timeout_seconds: float = Field(default=600, gt=0)
    instance_id: str = ""


class PageLimits(_Section):
    per_hour: int = Field(ge=0)
    per_24h: int = Field(ge=0)


class GuardrailSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_gap_seconds: int = Field(default=60, ge=0, le=86_400)
    brand_per_24h: int = Field(default=500, ge=0, le=CEILING_BRAND_PER_24H)
    facebook: PageLimits = PageLimits(per_hour=10, per_24h=40)
    instagram: PageLimits = PageLimits(per_hour=8, per_24h=30)
    linkedin: PageLimits = PageLimits(per_hour=3, per_24h=15)
    tiktok: PageLimits = PageLimits(per_hour=10, per_24h=50)
    twitter: PageLimits = PageLimits(per_hour=50, per_24h=300)
    youtube: PageLimits = PageLimits(per_hour=3, per_24h=10)
    mastodon: PageLimits = PageLimits(per_hour=10, per_24h=50)
    bluesky: PageLimits = PageLimits(per_hour=10, per_24h=50)
    sandbox: PageLimits = PageLimits(per_hour=10, per_24h=40)

    @field_validator(*CEILING_PAGE_LIMITS)
    @classmethod
    def _under_ceiling(cls, limits: PageLimits, info: ValidationInfo) -> PageLimits:
        hour_cap, day_cap = CEILING_PAGE_LIMITS[str(info.field_name)]
        if limits.per_hour > hour_cap:
            raise ValueError(f"per_hour {limits.per_hour} exceeds the hard ceiling {hour_cap}")
        if limits.per_24h > day_cap:
            raise ValueError(f"per_24h {limits.per_24h} exceeds the hard ceiling {day_cap}")
        return limits

    def for_platform(self, platform: str) -> PageLimits:
        limits: PageLimits = getattr(self, platform)
        return limits


class RetrySettings(_Section):
    max_attempts: int = Field(default=5, ge=1, le=50)
    initial_backoff_seconds: float = Field(default=5, gt=0)
    max_backoff_seconds: float = Field(default=900, gt=0)
    inline_max_wait_seconds: float = Field(default=10, ge=0)
    deadline_seconds: int = Field(default=21_600, gt=0)


class PublishSettings(_Section):
    in_doubt: Literal["fail", "retry"] = "fail"


class SandboxSettings(_Section):
    state_path: str = ""
    latency_ms: float = Field(default=50, ge=0)
    latency_jitter_ms: float = Field(default=0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    ambiguous_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_per_minute: int = Field(default=0, ge=0)
    seed: int | None = None


class ApiSettings(_Section):
    # Proxies whose X-Forwarded-For is believed (IPs or CIDRs); others' is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # Where SANDBOX_EXHAUSTED points users.
    upgrade_url: str = "https://postd.invalid/upgrade"
    audit_retention_days: int = Field(default=30, ge=1)
    idempotency_hours: float = Field(default=24, gt=0)


class TierLimits(_Section):
    publishes: int = Field(ge=0)
    replies: int = Field(ge=0)
    reads: int = Field(ge=0)
    webhooks: int = Field(ge=0)
    per_minute: int = Field(ge=1)
    per_day: int = Field(ge=1)
    storage_bytes: int = Field(ge=0)
    max_file_bytes: int = Field(ge=0)
    active_keys: int = Field(ge=1)


_MB = 1024 * 1024


class TierSettings(_Section):
    """The API document's tier table (per_day is postd's: the document shows 90,000 for pro)."""

    free: TierLimits = TierLimits(
        publishes=60,
        replies=200,
        reads=10_000,
        webhooks=2_000,
        per_minute=10,
        per_day=15_000,
        storage_bytes=100 * _MB,
        max_file_bytes=25 * _MB,
        active_keys=10,
    )
    pro: TierLimits = TierLimits(
        publishes=500,
        replies=3_000,
        reads=100_000,
        webhooks=50_000,
        per_minute=60,
        per_day=90_000,
        storage_bytes=1024 * _MB,
        max_file_bytes=100 * _MB,
        active_keys=10,
    )
    elite: TierLimits = TierLimits(
        publishes=3_000,
        replies=20_000,
        reads=1_000_000,
        webhooks=500_000,
        per_minute=300,
        per_day=450_000,
        storage_bytes=5 * 1024 * _MB,
        max_file_bytes=250 * _MB,
        active_keys=25,
    )

    def get(self, tier: str) -> TierLimits:
        limits: TierLimits = getattr(self, tier)
        return limits


class SandboxTokenSettings(_Section):
    lifetime_requests: int = Field(default=100, ge=1)
    per_minute: int = Field(default=5, ge=1)
    per_day: int = Field(default=50, ge=1)


class NetguardSettings(_Section):
    """Outbound URL policy (webhooks, media URLs). Both switches are for loopback development."""

    allow_loopback: bool = False
    allow_http: bool = False


class WebhookSettings(_Section):
    timeout_seconds: float = Field(default=10, gt=0, le=120)
    # Wait before each retry, measured from the previous attempt; the delivery fails after the last.
    retry_schedule_seconds: tuple[float, ...] = (30, 120, 600, 1800, 7200)
    auto_disable_after: int = Field(default=20, ge=1)
    rotation_grace_hours: float = Field(default=24, gt=0)
    delivery_retention_days: int = Field(default=30, ge=1)
    concurrency: int = Field(default=32, ge=1, le=1024)
    batch_size: int = Field(default=200, ge=1, le=5000)

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(wait <= 0 for wait in value):
            raise ValueError("every wait must be > 0 seconds")
        return value


class SecuritySettings(_Section):
    """The Fernet key(s) that encrypt platform credentials at rest. First match wins: ``secret_key``
    (or env ``POSTD_SECURITY_SECRET_KEY``), then the file ``secret_key_file``, then the systemd
    credential ``$CREDENTIALS_DIRECTORY/postd-secret-key``. Several keys, comma- or
    newline-separated, are tried in order and the first encrypts (key rotation)."""

    secret_key: str = Field(default="", repr=False)
    secret_key_file: str = ""


class PlatformSettings(_Section):
    """Where a platform's API lives (tests point this at local fakes)."""

    api_base: str


class OAuthPlatformSettings(PlatformSettings):
    """A platform whose pages connect through an OAuth app registered by the operator."""

    client_id: str = ""
    client_secret: str = Field(default="", repr=False)


class PlatformsSettings(_Section):
    """Platform APIs (platforms.md). Timeouts apply to every call an adapter makes."""

    connect_timeout_seconds: float = Field(default=10, gt=0, le=300)
    read_timeout_seconds: float = Field(default=30, gt=0, le=600)
    media_poll_seconds: float = Field(default=2, gt=0, le=60)
    media_poll_max_seconds: float = Field(default=300, gt=0, le=3600)
    facebook: OAuthPlatformSettings = OAuthPlatformSettings(
        api_base="https://graph.facebook.com/v24.0"
    )
    instagram: OAuthPlatformSettings = OAuthPlatformSettings(
        api_base="https://graph.facebook.com/v24.0"
    )
    linkedin: OAuthPlatformSettings = OAuthPlatformSettings(
        api_base="https://api.linkedin.com/rest"
    )
    tiktok: OAuthPlatformSettings = OAuthPlatformSettings(api_base="https://open.tiktokapis.com")
    twitter: OAuthPlatformSettings = OAuthPlatformSettings(api_base="https://api.x.com")
    youtube: OAuthPlatformSettings = OAuthPlatformSettings(api_base="https://www.googleapis.com")
    # Empty: each page's own instance (page connect mastodon --instance).
    mastodon: PlatformSettings = PlatformSettings(api_base="")
    bluesky: PlatformSettings = PlatformSettings(api_base="https://bsky.social")

    @field_validator("facebook", "instagram", "linkedin", "tiktok", "twitter", "youtube", "bluesky")
    @classmethod
    def _http_url(cls, value: PlatformSettings) -> PlatformSettings:
        if not value.api_base.startswith(("https://", "http://")):
            raise ValueError("api_base must be an http(s) URL")
        return value


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    dispatch: DispatchSettings = DispatchSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    retry: RetrySettings = RetrySettings()
    publish: PublishSettings = PublishSettings()
    sandbox: SandboxSettings = SandboxSettings()
    api: ApiSettings = ApiSettings()
    tiers: TierSettings = TierSettings()
    sandbox_tokens: SandboxTokenSettings = SandboxTokenSettings()
    netguard: NetguardSettings = NetguardSettings()
    webhooks: WebhookSettings = WebhookSettings()
    security: SecuritySettings = SecuritySettings()
    platforms: PlatformsSettings = PlatformsSettings()
    logging: LoggingSettings = LoggingSettings()
    # Directory that relative paths in the file are resolved against (the file's own directory).
    base_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def sandbox_state_path(self) -> Path:
        if self.sandbox.state_path:
            return self.resolve(self.sandbox.state_path)
        return self.resolve("sandbox.db")

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)


def _split_name(rest: str, model: type[BaseModel]) -> list[str] | None:
    """``platforms_bluesky_api_base`` -> ``["platforms", "bluesky", "api_base"]``: the longest
    section name first (``sandbox_tokens`` before ``sandbox``), nested sections likewise."""
    fields = sorted(
        (name for name in model.model_fields if name != "base_dir"), key=len, reverse=True
    )
    for name in fields:
        if rest == name:
            return [name]
        if rest.startswith(name + "_"):
            annotation = model.model_fields[name].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                tail = _split_name(rest[len(name) + 1 :], annotation)
                return None if tail is None else [name, *tail]
    return None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``POSTD_<SECTION>_<KEY>`` (and ``POSTD_<SECTION>_<SUBSECTION>_<KEY>``) over the file."""
    for name, value in environ.items():
        if not name.startswith("POSTD_") or name == "POSTD_CONFIG":
            continue
        path = _split_name(name[len("POSTD_") :].lower(), Settings)
        if path is None or len(path) < 2:
            continue
        target, default = raw, Settings()
        for part in path[:-1]:
            default = getattr(default, part)
            if part not in target and target is not raw:
                # a nested section the file leaves out starts from its defaults, so one key
                # (POSTD_GUARDRAILS_FACEBOOK_PER_HOUR) can be set alone
                target[part] = default.model_dump()
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target[path[-1]] = value
    return raw


def _first_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    return ConfigError(loc or "config", message)


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse a TOML config file (or the defaults when ``path`` is None) plus the environment.

    Raises ConfigError naming the first offending key.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(file), "config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(file), f"cannot read: {exc.strerror}") from None
        base_dir = file.resolve().parent
    raw = _apply_env(raw, environ)
    try:
        return Settings.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        raise _first_error(exc) from None


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite URL, or None for other backends / in-memory databases."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest.split("?", 1)[0])
