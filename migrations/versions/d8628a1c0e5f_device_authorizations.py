"""device authorizations (RFC 8628)

Revision ID: d8628a1c0e5f
Revises: c3d91f0a6b2e

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd8628a1c0e5f'
down_revision = 'c3d91f0a6b2e'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('device_authorizations',
    sa.Column('device_code_hash', sa.String(length=64), nullable=False),
    sa.Column('user_code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('resources', sa.Text(), server_default='', nullable=False),
    sa.Column('interval', sa.Integer(), nullable=False),
    sa.Column('polls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('auth_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_device_authorizations_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_device_authorizations_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_code_hash', name=op.f('pk_device_authorizations')),
    sa.UniqueConstraint('user_code_hash', name=op.f('uq_device_authorizations_user_code_hash'))
    )
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_authorizations_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_authorizations_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_authorizations_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_authorizations_user_id'))
        batch_op.drop_index(batch_op.f('ix_device_authorizations_expires_at'))
        batch_op.drop_index(batch_op.f('ix_device_authorizations_client_id'))
    op.drop_table('device_authorizations')
