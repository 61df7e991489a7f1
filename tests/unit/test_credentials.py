"""Credentials at rest: Fernet keys from config, env, file or systemd credential; encryption
round trips; rotation with MultiFernet; the adapters' store over ``pages.credentials``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from adapters import base
from daemon import config, credentials, services
from daemon.clock import FakeClock
from daemon.store import db
from daemon.store.models import Page
from tests.conftest import make_settings

SECRET = {"access_token": "tok-s3cret", "instance": "https://m.example"}


def _settings(tmp_path: Path, **security: str) -> config.Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", security=security)


def test_vault_round_trip_and_ciphertext_hides_the_secret() -> None:
    """encrypt/decrypt round-trips; the stored bytes contain no plain credential."""
    vault = credentials.Vault([credentials.generate_key()])

    token = vault.encrypt(SECRET)

    assert b"tok-s3cret" not in token
    assert vault.decrypt(token) == SECRET


def test_a_wrong_key_is_a_key_problem_not_garbage() -> None:
    """A token sealed with another key is refused with KeyProblem."""
    token = credentials.Vault([credentials.generate_key()]).encrypt(SECRET)

    with pytest.raises(credentials.KeyProblem, match="do not open"):
        credentials.Vault([credentials.generate_key()]).decrypt(token)


def test_no_key_or_a_malformed_key_is_refused() -> None:
    """Vault needs at least one well-formed Fernet key; the message says where keys come from."""
    with pytest.raises(credentials.KeyProblem, match="secret_key"):
        credentials.Vault([])
    with pytest.raises(credentials.KeyProblem, match="not a Fernet key"):
        credentials.Vault(["not-a-key"])


def test_multifernet_rotation_moves_tokens_to_the_first_key() -> None:
    """With [new, old], old tokens still open; rotate() re-seals them so [new] alone opens them."""
    old, new = credentials.generate_key(), credentials.generate_key()
    token = credentials.Vault([old]).encrypt(SECRET)

    rotated = credentials.Vault([new, old]).rotate(token)

    assert credentials.Vault([new]).decrypt(rotated) == SECRET
    with pytest.raises(credentials.KeyProblem):
        credentials.Vault([old]).decrypt(rotated)


def test_key_source_precedence(tmp_path: Path) -> None:
    """secret_key (also from env) wins over secret_key_file, which wins over systemd's."""
    one, two, three = (credentials.generate_key() for _ in range(3))
    key_file = tmp_path / "k"
    credentials.write_key_file(key_file, [two])
    systemd_dir = tmp_path / "creds"
    credentials.write_key_file(systemd_dir / credentials.SYSTEMD_CREDENTIAL, [three])
    env = {"CREDENTIALS_DIRECTORY": str(systemd_dir)}

    both = _settings(tmp_path, secret_key=one, secret_key_file=str(key_file))
    assert credentials.key_source(both, env).keys == (one,)
    file_only = _settings(tmp_path, secret_key_file="k")  # relative to the config's directory
    assert credentials.key_source(file_only, env).path == key_file
    assert credentials.key_source(file_only, env).keys == (two,)
    assert credentials.key_source(_settings(tmp_path), env).keys == (three,)
    assert credentials.key_source(_settings(tmp_path), {}).keys == ()
    from_env = config.load(None, environ={"POSTD_SECURITY_SECRET_KEY": f"{one},{two}"})
    assert credentials.key_source(from_env, {}).keys == (one, two)
    assert one not in repr(from_env.security)


def test_key_file_is_owner_only_and_replaced_atomically(tmp_path: Path) -> None:
    """write_key_file leaves a 0600 file with one key per line and no temp files behind."""
    path = tmp_path / "secret.key"
    credentials.write_key_file(path, ["a", "b"])
    credentials.write_key_file(path, ["c"])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "c\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


async def _page(settings: config.Settings) -> tuple[object, str]:
    engine = db.create_engine(settings.database.url, settings.base_dir)
    await db.migrate(engine)
    now = FakeClock().now()
    async with db.sessionmaker(engine)() as session, session.begin():
        brand = await services.add_brand(session, "b", now)
        await session.flush()
        page = await services.add_page(
            session, brand_id=brand.id, platform="mastodon", name="m", now=now
        )
    return engine, page.id


async def test_page_credentials_store_loads_and_saves_encrypted(tmp_path: Path) -> None:
    """load() raises AuthError NOT_CONNECTED before a connect; save() stores ciphertext that
    load() decrypts."""
    settings = _settings(tmp_path, secret_key=credentials.generate_key())
    engine, page_id = await _page(settings)
    store = credentials.PageCredentials(engine, settings)
    try:
        with pytest.raises(base.AuthError) as info:
            await store.load(page_id)
        assert info.value.code == "NOT_CONNECTED"

        await store.save(page_id, SECRET)

        assert await store.load(page_id) == SECRET
        async with db.sessionmaker(engine)() as session:
            raw = (await session.get(Page, page_id)).credentials
        assert raw is not None and b"tok-s3cret" not in raw
    finally:
        await engine.dispose()


async def test_store_rereads_a_rotated_key_file(tmp_path: Path) -> None:
    """After rotate-key rewrote the key file, a running store opens the re-sealed credentials."""
    old, new = credentials.generate_key(), credentials.generate_key()
    key_file = tmp_path / "secret.key"
    credentials.write_key_file(key_file, [old])
    settings = _settings(tmp_path, secret_key_file=str(key_file))
    engine, page_id = await _page(settings)
    store = credentials.PageCredentials(engine, settings)
    try:
        await store.save(page_id, SECRET)
        assert await store.load(page_id) == SECRET
        async with db.sessionmaker(engine)() as session, session.begin():
            assert await credentials.rotate_all(session, credentials.Vault([new, old])) == 1
        credentials.write_key_file(key_file, [new])

        assert await store.load(page_id) == SECRET
    finally:
        await engine.dispose()


async def test_unreadable_credentials_are_permanent_not_auth(tmp_path: Path) -> None:
    """A wrong key fails the post (CREDENTIALS_UNREADABLE) without marking the page
    needs_reauth: the fix is the key, not a re-connect."""
    settings = _settings(tmp_path, secret_key=credentials.generate_key())
    engine, page_id = await _page(settings)
    try:
        await credentials.PageCredentials(engine, settings).save(page_id, SECRET)
        other = _settings(tmp_path, secret_key=Fernet.generate_key().decode())
        with pytest.raises(base.PermanentError) as info:
            await credentials.PageCredentials(engine, other).load(page_id)
        assert type(info.value) is base.PermanentError
        assert info.value.code == "CREDENTIALS_UNREADABLE"
    finally:
        await engine.dispose()
