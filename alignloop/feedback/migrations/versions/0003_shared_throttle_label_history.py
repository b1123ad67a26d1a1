"""Login throttling shared by every server process (``login_attempts``), and the history of edited labels.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(64), nullable=False, index=True),
        sa.Column("account", sa.String(64), nullable=False, index=True),
        sa.Column("started_at", sa.Float, nullable=False, index=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
    )
    op.add_column("labels", sa.Column("history", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("history")
    op.drop_table("login_attempts")
