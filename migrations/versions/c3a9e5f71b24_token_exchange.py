"""token exchange (RFC 8693): a token record's own client and audience

Revision ID: c3a9e5f71b24
Revises: 7e4b2c9a1d3f

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3a9e5f71b24'
down_revision = '7e4b2c9a1d3f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('audience', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_token_records_client_id'), ['client_id'], unique=False)
        batch_op.create_foreign_key(
            batch_op.f('fk_token_records_client_id_clients'),
            'clients',
            ['client_id'],
            ['client_id'],
            ondelete='CASCADE',
        )


def downgrade():
    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_token_records_client_id_clients'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_token_records_client_id'))
        batch_op.drop_column('audience')
        batch_op.drop_column('client_id')
