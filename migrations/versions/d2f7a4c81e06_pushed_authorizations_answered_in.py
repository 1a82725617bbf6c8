"""pushed requests keep the browser session that answered them, which may answer again

Revision ID: d2f7a4c81e06
Revises: a7c3e9d15b42

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd2f7a4c81e06'
down_revision = 'a7c3e9d15b42'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_id', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.drop_column('session_id')
