"""ORM tables of the feedback app. One row per (item, annotator) answer, never only an aggregate."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

TASK_TYPES = ("pairwise", "ranking", "likert", "criteria")
DEFAULT_CRITERIA = ["helpful", "harmless", "honest"]
ACCESS_MODES = ("members", "all")  # who may annotate a project: its members only, or every annotator
TOKEN_SCOPES = ("annotate", "admin")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class AppSetting(Base):
    """Key/value settings; holds the generated secret key so restarts keep sessions valid."""

    __tablename__ = "app_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "annotator"
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Excluded annotators keep their rows (audit) but get no more items and their labels leave exports and metrics.
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when an admin sets the password: the user must choose a new one before doing anything else.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="annotate")  # annotate | admin
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # None counts as expired


class LoginSession(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)  # address at login, for the session list


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task_type: Mapped[str] = mapped_column(String(16))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    allow_rationale: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_edit: Mapped[bool] = mapped_column(Boolean, default=False)
    criteria: Mapped[list[Any]] = mapped_column(JSON, default=lambda: list(DEFAULT_CRITERIA))
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready | generating | failed
    access: Mapped[str] = mapped_column(String(16), default="members")  # members | all (see ACCESS_MODES)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list[Item]] = relationship(back_populates="project", cascade="all, delete-orphan")


class ProjectMember(Base):
    """An annotator allowed into a project whose access is "members"."""

    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One prompt with the responses shown together (2 for pairwise/criteria, K otherwise)."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_best: Mapped[int | None] = mapped_column(Integer, nullable=True)  # index of the known-best response
    project: Mapped[Project] = relationship(back_populates="items")
    responses: Mapped[list[Response]] = relationship(
        back_populates="item", order_by="Response.idx", cascade="all, delete-orphan"
    )


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("item_id", "idx"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)  # never shown to annotators
    names_own_model: Mapped[bool] = mapped_column(Boolean, default=False)
    item: Mapped[Item] = relationship(back_populates="responses")


class Assignment(Base):
    """An item handed to one annotator. ``slot`` claims one of the item's overlap places:
    the unique (item_id, slot) constraint is what stops two concurrent annotators from
    over-filling an item; skipping frees the slot by setting it to NULL."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"), UniqueConstraint("item_id", "slot"))
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    display_order: Mapped[list[Any]] = mapped_column(JSON)  # response idx shown at each position
    # open | done | skipped | flagged | released (taken back when its annotator was excluded, deactivated or
    # removed from the project: the slot is free again and the row stays for the audit)
    status: Mapped[str] = mapped_column(String(16), default="open")
    flag_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    item: Mapped[Item] = relationship()


class Label(Base):
    """The raw answer. The unique assignment_id makes a double submit store one row."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), unique=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    edited_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Earlier versions, oldest first, when the annotator edited the label: [{answer, rationale, edited_response, at}]
    history: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class LoginAttempt(Base):
    """One password check, counted before it runs: the login throttle's state, shared by every server
    process on the database (ratelimit.py). Rows older than the throttle's window are deleted."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    account: Mapped[str] = mapped_column(String(64), index=True)  # as typed, lower-cased: unknown names too
    started_at: Mapped[float] = mapped_column(Float, index=True)  # Unix time (compared across processes)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str] = mapped_column(String(8), default="pending")  # pending | failed | cleared | ok


class Job(Base):
    """A background job (live candidate generation) with progress the admin page polls."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
