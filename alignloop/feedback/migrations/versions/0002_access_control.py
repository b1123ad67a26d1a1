"""Access control: expiring, scoped API tokens; forced password change; session addresses;
per-project membership.

Existing databases keep working: every existing project stays open to all annotators
(``access = 'all'``), existing tokens of admins keep the admin scope, and every existing token
gets 30 days from the upgrade before it expires (it never expired before).

Revision ID: 0002
Revises: 0001
"""

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LEGACY_TOKEN_DAYS = 30


def upgrade() -> None:
    op.add_column("users", sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("api_tokens", sa.Column("scope", sa.String(16), nullable=False, server_default="annotate"))
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime, nullable=True))
    op.add_column("sessions", sa.Column("client", sa.String(64), nullable=True))
    op.add_column("projects", sa.Column("access", sa.String(16), nullable=False, server_default="all"))
    op.create_table(
        "project_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "user_id"),
    )
    expires = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=LEGACY_TOKEN_DAYS)
    tokens = sa.table("api_tokens", sa.column("scope", sa.String), sa.column("expires_at", sa.DateTime),
                      sa.column("user_id", sa.Integer))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("role", sa.String))
    op.execute(tokens.update().values(expires_at=expires))
    admins = sa.select(users.c.id).where(users.c.role == "admin")
    op.execute(tokens.update().where(tokens.c.user_id.in_(admins)).values(scope="admin"))


def downgrade() -> None:
    op.drop_table("project_members")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("access")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("client")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("scope")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("must_change_password")
