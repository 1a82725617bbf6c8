"""pushed requests keep how they were answered (a code or an error), answered again only so

Revision ID: 1e6c9b3f7a52
Revises: d2f7a4c81e06

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '1e6c9b3f7a52'
down_revision = 'd2f7a4c81e06'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer', sa.String(length=8), nullable=True))


def downgrade():
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.drop_column('answer')
