"""Running accounts for an organisation: deactivate, exclude, set or change passwords, sessions and API
tokens, and per-project membership. Every function runs inside the caller's transaction.

Password hashes are computed by the caller *before* the transaction (argon2 is slow on purpose and
must not hold the SQLite writer lock); these functions only store them."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback.models import (
    ACCESS_MODES,
    ApiToken,
    Assignment,
    LoginSession,
    Project,
    ProjectMember,
    User,
    utcnow,
)
from alignloop.feedback.security import sha256
from alignloop.feedback.store import Conflict, NotFound


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


def user_by_name(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def release_open(session: Session, user_id: int, project_id: int | None = None) -> int:
    """Return the user's open items to the pool (their slot frees; the row stays, as 'released')."""
    q = update(Assignment).where(Assignment.user_id == user_id, Assignment.status == "open")
    if project_id is not None:
        q = q.where(Assignment.project_id == project_id)
    return session.execute(q.values(status="released", slot=None, completed_at=utcnow())).rowcount or 0


def end_sessions(session: Session, user_id: int, keep_session_id: str | None = None) -> int:
    q = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep_session_id:
        q = q.where(LoginSession.session_hash != sha256(keep_session_id))
    return session.execute(q).rowcount or 0


def revoke_tokens(session: Session, user_id: int) -> int:
    return session.execute(delete(ApiToken).where(ApiToken.user_id == user_id)).rowcount or 0


def set_active(session: Session, user_id: int, active: bool, actor: User | None = None) -> User:
    """Deactivating ends the user's sessions, revokes their API tokens and returns their open items to
    the pool at once; their labels stay (and stay in exports unless they are also excluded)."""
    user = get_user(session, user_id)
    if not active and actor is not None and actor.id == user.id:
        raise Conflict("you cannot deactivate your own account")
    if not active and user.role == "admin" and user.active and session.scalar(
            select(User.id).where(User.role == "admin", User.active.is_(True), User.id != user.id).limit(1)) is None:
        raise Conflict("this is the last active admin; make another admin first")
    user.active = active
    if not active:
        end_sessions(session, user.id)
        revoke_tokens(session, user.id)
        release_open(session, user.id)
    session.flush()
    return user


def set_excluded(session: Session, user_id: int, excluded: bool) -> User:
    """Excluding stops the annotator at once: no new items, no submits, their open items return to the
    pool, and the items they labelled get their overlap slot back so other annotators label them
    instead (their labels stay stored but leave exports and metrics). Including them again lets
    them continue; items relabelled meanwhile then hold one label more than the overlap."""
    user = get_user(session, user_id)
    user.excluded = excluded
    if excluded:
        release_open(session, user.id)
        session.execute(update(Assignment).where(Assignment.user_id == user.id, Assignment.slot.is_not(None))
                        .values(slot=None))
    session.flush()
    return user


def set_password_hash(session: Session, user_id: int, password_hash: str, must_change: bool,
                      keep_session_id: str | None = None, expected_old_hash: str | None = None) -> User:
    """Store a new password hash and end every other session. An admin setting it (``must_change``)
    also revokes the user's API tokens; the user must choose a new password at their next login.
    ``expected_old_hash`` guards a user's own change against a concurrent one."""
    user = get_user(session, user_id)
    if expected_old_hash is not None and user.password_hash != expected_old_hash:
        raise Conflict("the password was changed meanwhile; try again")
    user.password_hash = password_hash
    user.must_change_password = must_change
    end_sessions(session, user.id, keep_session_id)
    if must_change:
        revoke_tokens(session, user.id)
    session.flush()
    return user


def sessions_of(session: Session, user_id: int) -> list[LoginSession]:
    return list(session.scalars(select(LoginSession).where(LoginSession.user_id == user_id,
                                                           LoginSession.expires_at > utcnow())
                                .order_by(LoginSession.id)))


def tokens_of(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


def end_session(session: Session, session_row_id: int, actor: User) -> None:
    row = session.get(LoginSession, session_row_id)
    if row is None or (row.user_id != actor.id and actor.role != "admin"):
        raise NotFound("session not found")
    session.delete(row)


def revoke_token(session: Session, token_id: int, actor: User) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != actor.id and actor.role != "admin"):
        raise NotFound("token not found")
    session.delete(row)


def members_of(session: Session, project: Project) -> list[User]:
    return list(session.scalars(select(User).join(ProjectMember, ProjectMember.user_id == User.id)
                                .where(ProjectMember.project_id == project.id).order_by(User.username)))


def add_member(session: Session, project: Project, user: User) -> bool:
    """Returns False when the user already was a member."""
    if session.scalar(select(ProjectMember.id).where(ProjectMember.project_id == project.id,
                                                     ProjectMember.user_id == user.id)) is not None:
        return False
    session.add(ProjectMember(project_id=project.id, user_id=user.id))
    session.flush()
    return True


def remove_member(session: Session, project: Project, user: User) -> bool:
    """Removing a member returns their open item in the project to the pool; their labels stay."""
    gone = session.execute(delete(ProjectMember).where(ProjectMember.project_id == project.id,
                                                       ProjectMember.user_id == user.id)).rowcount
    release_open(session, user.id, project.id)
    return bool(gone)


def set_access(session: Session, project: Project, access: str) -> Project:
    if access not in ACCESS_MODES:
        raise AlignloopError(f"access: must be one of {', '.join(ACCESS_MODES)}")
    project.access = access
    if access == "members":  # annotators outside the list lose their open items here
        members = select(ProjectMember.user_id).where(ProjectMember.project_id == project.id)
        admins = select(User.id).where(User.role == "admin")
        session.execute(update(Assignment).where(
            Assignment.project_id == project.id, Assignment.status == "open", Assignment.user_id.not_in(members),
            Assignment.user_id.not_in(admins)).values(status="released", slot=None, completed_at=utcnow()))
    session.flush()
    return project


def user_view(user: User) -> dict:
    return {"id": user.id, "username": user.username, "role": user.role, "active": user.active,
            "excluded": user.excluded, "must_change_password": user.must_change_password,
            "created_at": user.created_at.isoformat() + "Z"}


def session_view(row: LoginSession, current_id: str | None = None) -> dict:
    return {"id": row.id, "created_at": row.created_at.isoformat() + "Z",
            "expires_at": row.expires_at.isoformat() + "Z", "client": row.client,
            "current": bool(current_id) and row.session_hash == sha256(current_id or "")}


def token_view(row: ApiToken) -> dict:
    expires = row.expires_at
    return {"id": row.id, "name": row.name, "scope": row.scope, "created_at": row.created_at.isoformat() + "Z",
            "expires_at": expires.isoformat() + "Z" if expires else None,
            "expired": expires is None or expires < utcnow()}
