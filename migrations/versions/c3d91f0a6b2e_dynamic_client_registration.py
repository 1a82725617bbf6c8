"""dynamic client registration: initial access tokens, registration access tokens

Revision ID: c3d91f0a6b2e
Revises: c3a9e5f71b24

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3d91f0a6b2e'
down_revision = 'c3a9e5f71b24'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secret_auth_method', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('registration_token_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_clients_registration_token_hash'), ['registration_token_hash'])
    op.create_table('initial_access_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('spent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_initial_access_tokens'))
    )
    with op.batch_alter_table('initial_access_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_initial_access_tokens_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('initial_access_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_initial_access_tokens_expires_at'))
    op.drop_table('initial_access_tokens')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_clients_registration_token_hash'), type_='unique')
        batch_op.drop_column('registration_token_hash')
        batch_op.drop_column('secret_auth_method')
