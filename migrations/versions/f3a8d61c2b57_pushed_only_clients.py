"""clients whose authorization requests must be pushed first (RFC 9126 §6)

Revision ID: f3a8d61c2b57
Revises: e5b7c2d94a10

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f3a8d61c2b57'
down_revision = 'e5b7c2d94a10'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pushed_only', sa.Boolean(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('pushed_only')
