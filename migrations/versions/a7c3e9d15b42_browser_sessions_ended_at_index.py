"""browser sessions indexed by when they ended, so the purge's batches need no table scan

Revision ID: a7c3e9d15b42
Revises: 5e0e58fd84a0

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'a7c3e9d15b42'
down_revision = '5e0e58fd84a0'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_browser_sessions_ended_at'), ['ended_at'], unique=False)


def downgrade():
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_browser_sessions_ended_at'))
