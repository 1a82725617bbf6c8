"""DPoP (RFC 9449): the key a public client's login is bound to

Revision ID: 9d3f6b2e8a41
Revises: 7e4b2c9a1d3f

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9d3f6b2e8a41'
down_revision = '7e4b2c9a1d3f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('token_families', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dpop_jkt', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('token_families', schema=None) as batch_op:
        batch_op.drop_column('dpop_jkt')
