"""``alignloop annotate`` commands for running accounts: list users, deactivate, exclude, set passwords,
list and revoke API tokens, end sessions, and project membership."""

from __future__ import annotations

import secrets
from typing import Optional

import typer
from sqlalchemy import delete, select

from alignloop.errors import AlignloopError
from alignloop.feedback import access
from alignloop.feedback.cli_common import DB_OPT, PROJECT_ID_OPT, ask_password, find_project, open_factory
from alignloop.feedback.db import run_tx
from alignloop.feedback.models import ApiToken, AppSetting, LoginSession, User
from alignloop.feedback.security import check_new_password, get_or_create_secret, hash_password


def users(db: str = DB_OPT) -> None:
    """List users: id, name, role, and whether they are active, excluded or must change their password."""
    rows = run_tx(open_factory(db), lambda s: [access.user_view(u) for u in s.scalars(select(User).order_by(User.id))])
    for u in rows:
        flags = [f for f, on in (("deactivated", not u["active"]), ("excluded", u["excluded"]),
                                 ("must-change-password", u["must_change_password"])) if on]
        typer.echo(f"{u['id']:>5}  {u['username']:<24} {u['role']:<10} {' '.join(flags) or 'active'}")


def _set_active(username: str, active: bool, db: str) -> None:
    run_tx(open_factory(db), lambda s: access.set_active(s, access.user_by_name(s, username).id, active))


def deactivate(username: str, db: str = DB_OPT) -> None:
    """Deactivate a user: sessions end, API tokens are revoked, open items go back to the pool."""
    _set_active(username, False, db)
    typer.echo(f"user {username!r} deactivated; sessions ended, tokens revoked, open items returned to the pool")


def reactivate(username: str, db: str = DB_OPT) -> None:
    """Let a deactivated user log in again."""
    _set_active(username, True, db)
    typer.echo(f"user {username!r} reactivated")


def exclude(username: str, undo: bool = typer.Option(False, "--undo", help="Include the user again."),
            db: str = DB_OPT) -> None:
    """Stop an annotator at once: no items, no submits; their labels leave exports and metrics."""
    run_tx(open_factory(db), lambda s: access.set_excluded(s, access.user_by_name(s, username).id, not undo))
    typer.echo(f"user {username!r} {'included again' if undo else 'excluded'}")


def set_password(username: str,
                 temporary: bool = typer.Option(True, "--temporary/--permanent",
                                                help="Temporary (default): the user must change it at the next "
                                                     "login, and their API tokens are revoked."),
                 db: str = DB_OPT) -> None:
    """Set a user's password (from ALIGNLOOP_USER_PASSWORD or a prompt); all their sessions end."""
    factory = open_factory(db)
    run_tx(factory, lambda s: access.user_by_name(s, username))
    password = ask_password("ALIGNLOOP_USER_PASSWORD", f"New password for {username}")
    check_new_password(password)
    new_hash = hash_password(password)
    run_tx(factory, lambda s: access.set_password_hash(s, access.user_by_name(s, username).id, new_hash, temporary))
    typer.echo(f"password of {username!r} set{' (to be changed at the next login)' if temporary else ''}; "
               "sessions ended")


def tokens(username: str, db: str = DB_OPT) -> None:
    """List a user's API tokens (id, name, scope, expiry); the tokens themselves are never stored."""
    def rows(s):  # type: ignore[no-untyped-def]
        return [access.token_view(t) for t in access.tokens_of(s, access.user_by_name(s, username).id)]

    for t in run_tx(open_factory(db), rows):
        state = "expired" if t["expired"] else f"expires {t['expires_at'][:10]}"
        typer.echo(f"{t['id']:>5}  {t['name']:<24} {t['scope']:<9} {state}")


def revoke_token(token_id: int, db: str = DB_OPT) -> None:
    """Revoke an API token by its id (see `tokens USER`)."""
    def apply(s):  # type: ignore[no-untyped-def]
        row = s.get(ApiToken, token_id) if 1 <= token_id < 2**31 else None
        if row is None:
            raise AlignloopError(f"no token with id {token_id}")
        s.delete(row)

    run_tx(open_factory(db), apply)
    typer.echo(f"token {token_id} revoked")


def end_sessions(username: str, db: str = DB_OPT) -> None:
    """Log a user out everywhere."""
    n = run_tx(open_factory(db), lambda s: access.end_sessions(s, access.user_by_name(s, username).id))
    typer.echo(f"ended {n} session(s) of {username!r}")


def members(project: Optional[str] = typer.Argument(None, help="Project name."),
            project_id: Optional[int] = PROJECT_ID_OPT,
            add: str = typer.Option("", help="Usernames to add, comma-separated."),
            remove: str = typer.Option("", help="Usernames to remove, comma-separated."),
            access_mode: Optional[str] = typer.Option(None, "--access", help="members (only members annotate) | all"),
            db: str = DB_OPT) -> None:
    """Show or change who may annotate a project."""
    def apply(s):  # type: ignore[no-untyped-def]
        p = find_project(s, project, project_id)
        for name in [n.strip() for n in add.split(",") if n.strip()]:
            access.add_member(s, p, access.user_by_name(s, name))
        for name in [n.strip() for n in remove.split(",") if n.strip()]:
            access.remove_member(s, p, access.user_by_name(s, name))
        if access_mode is not None:
            access.set_access(s, p, access_mode)
        return p.name, p.access, [u.username for u in access.members_of(s, p)]

    name, mode, names = run_tx(open_factory(db), apply)
    who = "members only" if mode == "members" else "every annotator"
    typer.echo(f"project {name!r}: {who}; members: {', '.join(names) or '(none)'}")


def rotate_secret(db: str = DB_OPT) -> None:
    """Replace the signing key: every session, CSRF token and device cookie becomes invalid (everyone
    logs in again). API tokens are unaffected. Restart `serve` afterwards: it holds the key in memory."""
    def apply(s) -> int:  # type: ignore[no-untyped-def]
        get_or_create_secret(s)
        s.get(AppSetting, "secret_key").value = secrets.token_urlsafe(48)
        return s.execute(delete(LoginSession)).rowcount or 0

    n = run_tx(open_factory(db), apply)
    typer.echo(f"signing key replaced; {n} session(s) ended. Restart `alignloop annotate serve` now.")


def register(app: typer.Typer) -> None:
    for fn, name in ((users, "users"), (deactivate, "deactivate"), (reactivate, "reactivate"), (exclude, "exclude"),
                     (set_password, "set-password"), (tokens, "tokens"), (revoke_token, "revoke-token"),
                     (end_sessions, "end-sessions"), (members, "members"), (rotate_secret, "rotate-secret")):
        app.command(name)(fn)
