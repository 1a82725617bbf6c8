"""client keys for private_key_jwt, and single-use JWT ids

Revision ID: 7e4b2c9a1d3f
Revises: 5c1e8a7d2f90

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7e4b2c9a1d3f'
down_revision = '5c1e8a7d2f90'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('jwks', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('jwks_uri', sa.String(length=2048), nullable=True))
    op.create_table('spent_jtis',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_spent_jtis'))
    )
    with op.batch_alter_table('spent_jtis', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_spent_jtis_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('spent_jtis', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_spent_jtis_expires_at'))
    op.drop_table('spent_jtis')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('jwks_uri')
        batch_op.drop_column('jwks')
