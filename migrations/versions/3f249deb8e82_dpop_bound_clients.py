"""DPoP (RFC 9449 §5.2): clients whose every token request must carry a proof

Revision ID: 3f249deb8e82
Revises: 9d3f6b2e8a41

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '3f249deb8e82'
down_revision = '9d3f6b2e8a41'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dpop_bound', sa.Boolean(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('dpop_bound')
