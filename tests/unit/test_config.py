"""Config: defaults, the example file, environment overrides, one-line errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon import config
from daemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def _keys(model: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in type(model).model_fields.items():
        if field.exclude:
            continue
        value = getattr(model, name)
        if hasattr(type(value), "model_fields"):
            keys |= _keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _flatten(raw: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in raw.items():
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_documents_every_key_with_its_default() -> None:
    """config.example.toml names every settings key (seed aside) and its values are the defaults."""
    raw = tomllib.loads(EXAMPLE.read_text())
    documented = _flatten(raw)
    assert _keys(config.Settings()) - documented == {"sandbox.seed"}
    assert "# seed = " in EXAMPLE.read_text()
    parsed = config.load(EXAMPLE, environ={})
    assert parsed.model_dump(exclude={"base_dir"}) == config.Settings().model_dump(
        exclude={"base_dir"}
    )


def test_defaults_match_the_seed_guardrail_table() -> None:
    """Defaults: FB 10/40, IG 8/30, LN 3/15, TT 10/50, TW 50/300, 60 s gap, 500/brand/24 h."""
    g = config.Settings().guardrails
    table = {
        "facebook": (10, 40),
        "instagram": (8, 30),
        "linkedin": (3, 15),
        "tiktok": (10, 50),
        "twitter": (50, 300),
    }
    for platform, (hour, day) in table.items():
        assert (g.for_platform(platform).per_hour, g.for_platform(platform).per_24h) == (hour, day)
    assert (g.min_gap_seconds, g.brand_per_24h) == (60, 500)
    s = config.Settings().scheduling
    assert (s.min_lead_seconds, s.max_horizon_days, s.sweep_seconds) == (600, 75, 30)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[scheduling]\nmin_lead_seconds = 'soon'\n", "scheduling.min_lead_seconds", "integer"),
        (
            "[guardrails.facebook]\nper_hour = 26\nper_24h = 40\n",
            "guardrails.facebook",
            "ceiling 25",
        ),
        ("[guardrails]\nbrand_per_24h = 5000\n", "guardrails.brand_per_24h", "2000"),
        ("[publish]\nin_doubt = 'maybe'\n", "publish.in_doubt", "'fail' or 'retry'"),
        ("[server]\nbind = 'nowhere'\n", "server.bind", "HOST:PORT"),
        ("[database]\nurl = 'mysql://x'\n", "database.url", "sqlite"),
        ("[schedulng]\nsweep_seconds = 1\n", "schedulng", "unknown key"),
        ("[scheduling]\nsweep_secs = 1\n", "scheduling.sweep_secs", "unknown key"),
        ("[scheduling\n", "postd.toml", "invalid TOML"),
    ],
)
def test_bad_config_names_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    """Each bad config raises one ConfigError whose message starts with the key."""
    path = tmp_path / "postd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    message = str(info.value)
    assert message.startswith(key) or message.startswith(str(path)), message
    assert problem in message
    assert "\n" not in message


def test_environment_overrides_file(tmp_path: Path) -> None:
    """POSTD_<SECTION>_<KEY> overrides the file (how secrets such as the DB URL are passed)."""
    path = tmp_path / "postd.toml"
    path.write_text("[database]\nurl = 'sqlite:///a.db'\n")
    env = {"POSTD_DATABASE_URL": "postgresql://u@h/db", "POSTD_SCHEDULING_SWEEP_SECONDS": "5"}
    settings = config.load(path, environ=env)
    assert settings.database.url == "postgresql://u@h/db"
    assert settings.scheduling.sweep_seconds == 5
    assert "postgresql" not in repr(settings.database)


def test_environment_overrides_nested_sections(tmp_path: Path) -> None:
    """POSTD_<SECTION>_<SUBSECTION>_<KEY> reaches nested sections (platform URLs, secrets, one
    guardrail number alone); secrets stay out of reprs."""
    env = {
        "POSTD_PLATFORMS_BLUESKY_API_BASE": "http://127.0.0.1:9/pds",
        "POSTD_PLATFORMS_TWITTER_CLIENT_SECRET": "tw-s3cret",
        "POSTD_SECURITY_SECRET_KEY": "k-s3cret",
        "POSTD_GUARDRAILS_FACEBOOK_PER_HOUR": "3",
        "POSTD_SANDBOX_TOKENS_PER_MINUTE": "7",
    }
    settings = config.load(None, environ=env)
    assert settings.platforms.bluesky.api_base == "http://127.0.0.1:9/pds"
    assert settings.platforms.twitter.client_secret == "tw-s3cret"
    assert settings.security.secret_key == "k-s3cret"
    assert (settings.guardrails.facebook.per_hour, settings.guardrails.facebook.per_24h) == (3, 40)
    assert settings.sandbox_tokens.per_minute == 7
    assert "s3cret" not in repr(settings)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such."""
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})
