"""device approvals die with the approver's browser session

Revision ID: e5b7c2d94a10
Revises: a91c0d4e7f26

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e5b7c2d94a10'
down_revision = 'a91c0d4e7f26'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_id', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.drop_column('session_id')
