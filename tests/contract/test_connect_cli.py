"""Connecting pages without a browser, and the secret key's life cycle, through the CLI as
operators and acceptance checks use it (fakes on loopback)."""

from __future__ import annotations

import asyncio
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from daemon import config, credentials
from daemon.cli import main
from daemon.store import db
from daemon.store.models import Page
from tests.fakes._server import in_thread
from tests.fakes.bluesky import FakeBluesky
from tests.fakes.mastodon import FakeMastodon


def postd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


def pages(cfg: str) -> list[Page]:
    settings = config.load(cfg)

    async def go() -> list[Page]:
        engine = db.create_engine(settings.database.url, settings.base_dir)
        try:
            async with db.sessionmaker(engine)() as session:
                return list(await session.scalars(select(Page)))
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    code, out, err = postd("init", "--dir", str(tmp_path / "data"))
    assert code == 0, err
    return out.strip().splitlines()[-1]


@pytest.fixture
def brand(cfg: str) -> str:
    code, out, err = postd("--config", cfg, "brand", "add", "Acme")
    assert code == 0, err
    return out.strip()


@pytest.fixture
def sky(cfg: str) -> Iterator[FakeBluesky]:
    with in_thread(FakeBluesky) as fake:
        assert isinstance(fake, FakeBluesky)
        yield fake


@pytest.fixture
def masto() -> Iterator[FakeMastodon]:
    with in_thread(FakeMastodon) as fake:
        assert isinstance(fake, FakeMastodon)
        yield fake


def test_init_writes_an_owner_only_key_file_and_points_the_config_at_it(cfg: str) -> None:
    """postd init generates a Fernet key (0600) beside the config and sets secret_key_file."""
    settings = config.load(cfg)
    source = credentials.key_source(settings, {})

    assert source.path == Path(cfg).parent / "secret.key"
    assert stat.S_IMODE(source.path.stat().st_mode) == 0o600
    credentials.Vault(source.keys)  # a well-formed key


def test_init_adds_a_key_to_a_kept_config_without_one(tmp_path: Path) -> None:
    """A config written before keys existed gets a [security] section and a key file; running
    init again never replaces an existing key."""
    data = tmp_path / "old"
    data.mkdir()
    (data / "postd.toml").write_text(f'[database]\nurl = "sqlite:///{data / "p.db"}"\n')

    assert postd("init", "--dir", str(data))[0] == 0
    key = (data / "secret.key").read_text()
    assert postd("init", "--dir", str(data))[0] == 0

    assert tomllib.loads((data / "postd.toml").read_text())["security"]["secret_key_file"]
    assert (data / "secret.key").read_text() == key


def test_connect_bluesky_logs_in_once_and_stores_the_session_encrypted(
    cfg: str, brand: str, sky: FakeBluesky
) -> None:
    """page connect bluesky: one createSession on api_base, a page with the DID and handle,
    credentials encrypted; the app password is stored nowhere and printed nowhere."""
    env = {"POSTD_PLATFORMS_BLUESKY_API_BASE": sky.base_url}
    args = ["--config", cfg, "page", "connect", "bluesky", "--brand", brand]
    code, out, err = postd(
        *args, "--handle", "alice.test", "--app-password", "app-pass-1234", env=env
    )

    assert code == 0, err
    (page,) = pages(cfg)
    assert out.strip() == page.id
    assert (page.platform, page.external_id, page.username) == ("bluesky", sky.did, "alice.test")
    assert len(sky.calls("create_session")) == 1
    assert page.credentials is not None and b"app-pass-1234" not in page.credentials
    opened = credentials.Vault(credentials.key_source(config.load(cfg), {}).keys).decrypt(
        page.credentials
    )
    assert set(opened) == {"did", "handle", "accessJwt", "refreshJwt"}
    assert "app-pass-1234" not in out + err


def test_connect_with_a_wrong_password_creates_nothing(
    cfg: str, brand: str, sky: FakeBluesky
) -> None:
    """A refused login exits 1 with one line naming the platform's code, and adds no page."""
    env = {"POSTD_PLATFORMS_BLUESKY_API_BASE": sky.base_url}
    code, _, err = postd(
        *["--config", cfg, "page", "connect", "bluesky", "--brand", brand],
        *["--handle", "alice.test", "--app-password", "nope"],
        env=env,
    )

    assert code == 1
    assert "AuthenticationRequired" in err and len(err.strip().splitlines()) == 1
    assert pages(cfg) == []


def test_connect_mastodon_verifies_the_token_and_reconnects(
    cfg: str, brand: str, masto: FakeMastodon
) -> None:
    """page connect mastodon: verify_credentials with the token; --page re-connects the same
    page with a new token and makes it active again."""
    args = ["--config", cfg, "page", "connect", "mastodon", "--instance", masto.base_url]
    code, out, err = postd(*args, "--brand", brand, "--token", "token-alice")
    assert code == 0, err
    page_id = out.strip()
    masto.add_account("token-new", "alice", "Alice")

    code, out, err = postd(*args, "--page", page_id, "--token", "token-new")

    assert (code, out.strip()) == (0, page_id), err
    (page,) = pages(cfg)
    assert (page.username, page.status) == ("alice", "active")
    verify = masto.calls("verify")
    assert [c.headers["authorization"] for c in verify] == [
        "Bearer token-alice",
        "Bearer token-new",
    ]
    vault = credentials.Vault(credentials.key_source(config.load(cfg), {}).keys)
    assert page.credentials is not None
    assert vault.decrypt(page.credentials)["access_token"] == "token-new"


def test_rotate_key_with_a_key_file(cfg: str, brand: str, masto: FakeMastodon) -> None:
    """rotate-key: a new key in the file, every credential re-sealed under it, the old key
    opens nothing any more."""
    args = ["--config", cfg, "page", "connect", "mastodon", "--instance", masto.base_url]
    assert postd(*args, "--brand", brand, "--token", "token-alice")[0] == 0
    source = credentials.key_source(config.load(cfg), {})
    assert source.path is not None

    code, out, err = postd("--config", cfg, "rotate-key")

    assert code == 0, err
    assert "re-encrypted 1" in out
    new = credentials.key_source(config.load(cfg), {}).keys
    assert len(new) == 1 and new != source.keys
    (page,) = pages(cfg)
    assert page.credentials is not None
    assert credentials.Vault(new).decrypt(page.credentials)["access_token"] == "token-alice"
    with pytest.raises(credentials.KeyProblem):
        credentials.Vault(source.keys).decrypt(page.credentials)


def test_rotate_key_from_the_environment_needs_both_keys(tmp_path: Path, cfg: str) -> None:
    """A key from the env cannot be replaced by postd: with one key rotate-key explains the
    two steps; with "new,old" it re-seals under the new one."""
    old = credentials.key_source(config.load(cfg), {}).keys[0]
    new = credentials.generate_key()

    code, _, err = postd("--config", cfg, "rotate-key", env={"POSTD_SECURITY_SECRET_KEY": old})
    assert code == 1 and "--generate" in err
    code, out, err = postd(
        "--config", cfg, "rotate-key", env={"POSTD_SECURITY_SECRET_KEY": f"{new},{old}"}
    )
    assert code == 0, err
    assert "remove the old key" in out
