"""SQLAlchemy 2 models: the posts table *is* the job store (SPEC §2).

One schema for SQLite and PostgreSQL. Every timestamp is timezone-aware UTC on the Python side
(:class:`UTCDateTime`). Later issues add tokens, media and webhooks in their own migrations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(24)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; always returns timezone-aware UTC datetimes (SQLite keeps no zone).

    On SQLite the value is stored as SQLAlchemy's DATETIME stores it (``YYYY-MM-DD
    HH:MM:SS.ffffff``, so text order is time order), but converted by ``isoformat`` and
    ``fromisoformat`` instead of the dialect's %-formatting and regex: this runs for every
    timestamp the dispatcher writes or reads.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime reached the store")
            if value.tzinfo is not UTC:
                value = value.astimezone(UTC)
            return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return process


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    firstname: Mapped[str | None] = mapped_column(String(200))
    lastname: Mapped[str | None] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(16), default="free")
    created_at: Mapped[datetime]


class Brand(Base):
    __tablename__ = "brands"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    logo: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class Page(Base):
    __tablename__ = "pages"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    brand_id: Mapped[str] = mapped_column(ForeignKey("brands.id"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    username: Mapped[str | None] = mapped_column(String(200))
    external_id: Mapped[str | None] = mapped_column(String(200))
    followers: Mapped[int] = mapped_column(Integer, default=0)
    profile_picture: Mapped[str | None] = mapped_column(Text)
    # "active" | "needs_reauth"
    status: Mapped[str] = mapped_column(String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(Text)
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary)  # Fernet token, never plain
    created_at: Mapped[datetime]

    @property
    def connection(self) -> str:
        """``status``, except ``"not_connected"`` for an active page with no credentials stored
        (``postd page connect``) on a platform that needs them (all but the sandbox)."""
        if self.status == "active" and self.platform != "sandbox" and not self.credentials:
            return "not_connected"
        return self.status

    @property
    def connected(self) -> bool:
        """Whether postd can publish as this page now."""
        return self.connection == "active"


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    page_id: Mapped[str] = mapped_column(ForeignKey("pages.id"))
    # Denormalised from the page so claiming and guardrail counts need no join.
    brand_id: Mapped[str] = mapped_column(ID)
    platform: Mapped[str] = mapped_column(String(32))
    # scheduled | publishing | published | failed | cancelled
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    first_comment: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    scheduled_at: Mapped[datetime]
    not_before: Mapped[datetime | None]
    # max(scheduled_at, not_before): what the dispatcher orders and wakes on.
    due_at: Mapped[datetime]
    defer_reason: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When postd first called the platform for it: the retry deadline counts from here, so time
    # spent deferred by guardrails does not eat into it.
    first_attempt_at: Mapped[datetime | None]
    # The instant this post counts at in the guardrail windows (claim time while in flight or in
    # doubt, the platform's publish time once published); NULL when it does not count.
    counted_at: Mapped[datetime | None]
    remote_id: Mapped[str | None] = mapped_column(String(200))
    permalink: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    first_comment_status: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_posts_state_due", "state", "due_at"),
        Index("ix_posts_state_lease", "state", "lease_expires_at"),
        Index("ix_posts_page_counted", "page_id", "counted_at"),
        Index("ix_posts_brand_counted", "brand_id", "counted_at"),
        # A brand's scheduled posts around an instant (queries.histories): without it SQLite
        # reads every brand's scheduled posts in the window through ix_posts_state_due.
        Index("ix_posts_brand_state_due", "brand_id", "state", "due_at"),
        # GET /posts/scheduled: pending posts in (scheduled_at, id) order, filtered on the index.
        Index("ix_posts_scheduled", "scheduled_at", "id", "state", "brand_id"),
        Index("ix_posts_page_state", "page_id", "state"),
    )


class PublishAttempt(Base):
    __tablename__ = "publish_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    post_id: Mapped[str] = mapped_column(ForeignKey("posts.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    instance: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # started | published | retry | deferred | failed | in_doubt | released | reconciled_* ...
    outcome: Mapped[str] = mapped_column(String(32))
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    http_status: Mapped[int | None] = mapped_column(Integer)
    excerpt: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    post_id: Mapped[str | None] = mapped_column(ID, index=True)
    user_id: Mapped[str | None] = mapped_column(ID)
    brand_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When the webhook deliverer turned it into delivery rows (NULL: not yet). A per-row mark
    # rather than a "last id" cursor: on PostgreSQL ids are not committed in order, so a cursor
    # would skip an event whose transaction commits after a later id was already fanned out.
    fanned_out_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_outbox_events_unfanned",
            "id",
            sqlite_where=text("fanned_out_at IS NULL"),
            postgresql_where=text("fanned_out_at IS NULL"),
        ),
    )


# -- API (issue 3): tokens, collaborators, audit, usage, idempotency --------------------------


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # "live" | "sandbox"
    kind: Mapped[str] = mapped_column(String(16), default="live")
    # What the API shows of the token (e.g. "outreply_live_ab12c"); never enough to use it.
    prefix: Mapped[str] = mapped_column(String(40))
    # SHA-256 hex of the whole token: tokens are never stored, only looked up by hash.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    brand_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    ip_allowlist: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(String(64))
    issued_by_collaborator_id: Mapped[str | None] = mapped_column(ID)
    on_behalf_of_brand_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    request_count: Mapped[int] = mapped_column(BigInteger, default=0)


class Collaborator(Base):
    __tablename__ = "collaborators"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    brand_id: Mapped[str] = mapped_column(ForeignKey("brands.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # "full" | "limited"
    access: Mapped[str] = mapped_column(String(16), default="full")
    created_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]

    __table_args__ = (Index("ux_collaborators_brand_user", "brand_id", "user_id", unique=True),)


class AuditEntry(Base):
    """One authenticated API request (kept 30 days)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    token_id: Mapped[str | None] = mapped_column(ID, index=True)
    user_id: Mapped[str | None] = mapped_column(ID)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(Integer)
    scope_denied: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(index=True)


class BrandAuditEntry(Base):
    """Token create / revoke / rotate on a brand, for its owners' timeline."""

    __tablename__ = "brand_audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    brand_id: Mapped[str] = mapped_column(ID, index=True)
    actor_user_id: Mapped[str | None] = mapped_column(ID)
    collaborator_id: Mapped[str | None] = mapped_column(ID)
    action: Mapped[str] = mapped_column(String(32))
    token_id: Mapped[str | None] = mapped_column(ID)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime]


class UsageCounter(Base):
    """Atomic counters (INSERT ... ON CONFLICT DO UPDATE), correct across instances: monthly
    buckets (period "2026-05"), burst minutes ("m:2026-05-01T10:07"), days ("d:2026-05-01")."""

    __tablename__ = "usage_counters"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)  # user or token id
    bucket: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)  # e.g. 80 % warning already sent


class IdempotencyKey(Base):
    """Stripe-style idempotency: per token, 24 h; the stored response is replayed."""

    __tablename__ = "idempotency_keys"

    token_id: Mapped[str] = mapped_column(ID, primary_key=True)
    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    # NULL while the first request is still executing.
    status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(index=True)
    locked_until: Mapped[datetime | None]
    # A running POST /posts/publish's post, written with it: a retry that takes the key over
    # after the owner died waits for that post instead of publishing a second one.
    post_id: Mapped[str | None] = mapped_column(ID)
    # A running POST /posts/schedule/bulk's posts so far, {item index: post id}, each written
    # with its post: a retry that takes the key over answers those items instead of repeating.
    made: Mapped[dict[str, str] | None] = mapped_column(JSON)


# -- webhooks (issue 4): subscriptions, deliveries, attempts -----------------------------------


class WebhookSubscription(Base):
    """A URL a user subscribed to events. The secret signs every delivery; during a rotation the
    previous one signs too, until ``previous_secret_expires_at``."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The creating token's brand restriction ([] = every brand the user owns).
    brand_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(64))
    previous_secret: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # "manual" | "consecutive_failures" | "gone" (the receiver answered 410)
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    disabled_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event for one subscription. ``id`` is the ``webhook-id`` header (stable across
    retries); ``body`` is the exact JSON text signed and sent on every attempt."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    user_id: Mapped[str] = mapped_column(ID)
    # The outbox event delivered (NULL for a test ping).
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    # pending | delivering | succeeded | failed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the current retry cycle (a redelivery starts a new cycle).
    cycle_start: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ux_webhook_deliveries_sub_event", "subscription_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_sub_created", "subscription_id", "created_at"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_lease", "status", "lease_expires_at"),
        Index("ix_webhook_deliveries_created", "created_at"),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery (or a refusal before sending, with its reason)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    instance: Mapped[str | None] = mapped_column(String(128))


# --- adapter progress (issue 5: two-phase platforms) ------------------------------------------


class AdapterProgress(Base):
    """What a two-phase adapter must keep between tries of one post (an Instagram container id,
    the mark of a sent publish call), by (post, key); see ``adapters/_progress.py``."""

    __tablename__ = "adapter_progress"

    post_id: Mapped[str] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]
