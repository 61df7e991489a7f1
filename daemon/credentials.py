"""Platform credentials at rest: Fernet-encrypted in ``pages.credentials``, never plain, never
logged, never returned by the API.

The key(s) come from ``[security]`` (see :func:`load_keys`); several keys form a MultiFernet:
all decrypt, the first encrypts, which is how ``postd rotate-key`` moves every stored credential
to a new key without a moment where one is unreadable. :class:`PageCredentials` is the adapters'
:class:`adapters._http.CredentialStore`: it loads and decrypts a page's credentials by page id
and stores refreshed ones.

errors.PostdError
 └── KeyProblem          no key configured, a malformed key, or a key file that cannot be read
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from adapters import base
from daemon import config
from daemon.errors import PostdError
from daemon.store import db
from daemon.store.models import Page

SYSTEMD_CREDENTIAL = "postd-secret-key"
KEY_FILE_NAME = "secret.key"

log = structlog.get_logger("postd.credentials")


class KeyProblem(PostdError):
    code = "SECRET_KEY"


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the keys came from; ``path`` is set when it is a file postd may rewrite."""

    keys: tuple[str, ...]
    described: str
    path: Path | None = None


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())


def _read(path: Path, described: str) -> tuple[str, ...]:
    try:
        return _split(path.read_text(encoding="ascii"))
    except (OSError, UnicodeError) as exc:
        raise KeyProblem(f"{described}: cannot read {path}: {exc}") from exc


def key_source(settings: config.Settings, environ: Mapping[str, str] | None = None) -> KeySource:
    """The configured keys, first match wins: ``[security] secret_key`` (env
    ``POSTD_SECURITY_SECRET_KEY``), ``secret_key_file``, the systemd credential. No keys at all
    gives an empty ``keys``."""
    environ = os.environ if environ is None else environ
    security = settings.security
    if security.secret_key:
        return KeySource(_split(security.secret_key), "security.secret_key")
    if security.secret_key_file:
        path = settings.resolve(security.secret_key_file)
        return KeySource(_read(path, "security.secret_key_file"), f"the key file {path}", path)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / SYSTEMD_CREDENTIAL).is_file():
        path = Path(directory) / SYSTEMD_CREDENTIAL
        return KeySource(_read(path, "systemd credential"), f"the systemd credential {path}")
    return KeySource((), "nowhere")


class Vault:
    """Encrypts and decrypts credential mappings with one or more Fernet keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise KeyProblem(
                "no secret key: set [security] secret_key_file (postd init writes one) or the env"
                " POSTD_SECURITY_SECRET_KEY"
            )
        try:
            self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])
        except (ValueError, UnicodeError) as exc:
            raise KeyProblem(
                "a secret key is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from exc

    def encrypt(self, credentials: Mapping[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(dict(credentials), sort_keys=True).encode())

    def decrypt(self, token: bytes) -> dict[str, str]:
        """The mapping, or KeyProblem when no configured key opens it."""
        try:
            data = json.loads(self._fernet.decrypt(token))
        except InvalidToken as exc:
            raise KeyProblem("stored credentials do not open with the configured key(s)") from exc
        return {str(k): str(v) for k, v in data.items()}

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted under the first key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise KeyProblem("stored credentials do not open with the configured key(s)") from exc


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def write_key_file(path: Path, keys: Sequence[str]) -> None:
    """Write ``keys`` (one per line) to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".postd-key-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write("".join(f"{key}\n" for key in keys))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class PageCredentials:
    """The adapters' credential store over ``pages.credentials``. Keys are read again when a
    token does not open (a key file rotated by ``postd rotate-key`` while the daemon runs)."""

    def __init__(self, engine: AsyncEngine, settings: config.Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._vault: Vault | None = None

    def _current(self, *, reload: bool = False) -> Vault:
        if self._vault is None or reload:
            try:
                self._vault = Vault(key_source(self._settings).keys)
            except KeyProblem as exc:
                raise base.PermanentError(str(exc), code="CREDENTIALS_UNREADABLE") from exc
        return self._vault

    async def load(self, page_id: str) -> Mapping[str, str]:
        async with db.single_read(self._engine) as conn:
            token = (
                await conn.execute(select(Page.credentials).where(Page.id == page_id))
            ).scalar_one_or_none()
        if not token:
            raise base.AuthError(
                f"page {page_id} is not connected: run postd page connect", code="NOT_CONNECTED"
            )
        try:
            return self._current().decrypt(token)
        except KeyProblem:
            try:
                return self._current(reload=True).decrypt(token)
            except KeyProblem as exc:
                log.error("credentials_unreadable", page_id=page_id)
                raise base.PermanentError(str(exc), code="CREDENTIALS_UNREADABLE") from exc

    async def save(self, page_id: str, credentials: Mapping[str, str]) -> None:
        token = self._current().encrypt(credentials)
        async with self._engine.begin() as conn:
            await conn.execute(update(Page).where(Page.id == page_id).values(credentials=token))


async def store(session: AsyncSession, page: Page, vault: Vault, creds: Mapping[str, str]) -> None:
    """Put ``creds`` on ``page`` (encrypted) and mark it active."""
    page.credentials = vault.encrypt(creds)
    page.status, page.status_reason = "active", None
    session.add(page)


async def rotate_all(session: AsyncSession, vault: Vault) -> int:
    """Re-encrypt every stored credential under ``vault``'s first key; how many there were."""
    rows = (
        await session.execute(
            select(Page.id, Page.credentials).where(Page.credentials.is_not(None))
        )
    ).all()
    for page_id, token in rows:
        if token is None:
            continue
        await session.execute(
            update(Page).where(Page.id == page_id).values(credentials=vault.rotate(token))
        )
    return len(rows)
