"""pushed authorization requests (RFC 9126)

Revision ID: a91c0d4e7f26
Revises: 3f249deb8e82

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a91c0d4e7f26'
down_revision = '3f249deb8e82'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'pushed_authorizations',
        sa.Column('request_uri_hash', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('parameters', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], name=op.f('fk_pushed_authorizations_client_id_clients'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('request_uri_hash', name=op.f('pk_pushed_authorizations')),
    )
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pushed_authorizations_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pushed_authorizations_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('pushed_authorizations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pushed_authorizations_expires_at'))
        batch_op.drop_index(batch_op.f('ix_pushed_authorizations_client_id'))
    op.drop_table('pushed_authorizations')
