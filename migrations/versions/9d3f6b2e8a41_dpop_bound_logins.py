"""DPoP (RFC 9449): the key a public client's login, or a code, is bound to

Revision ID: 9d3f6b2e8a41
Revises: d8628a1c0e5f

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9d3f6b2e8a41'
down_revision = 'd8628a1c0e5f'
branch_labels = None
depends_on = None


TABLES = ('token_families', 'authorization_codes')


def upgrade():
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('dpop_jkt', sa.String(length=64), nullable=True))


def downgrade():
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('dpop_jkt')
