"""key and session lifecycle: key states, wrapped private keys, token kids, secret overlap

Revision ID: 48a54d378cdf
Revises: b0b7d1a44332

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '48a54d378cdf'
down_revision = 'b0b7d1a44332'
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('next', 'current')")


def upgrade():
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_secret_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.alter_column('private_pem', new_column_name='private_key', existing_type=sa.Text(), existing_nullable=False)
        batch_op.add_column(sa.Column('state', sa.String(length=16), nullable=False, server_default='retired'))
        batch_op.add_column(sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True))

    # The newest unretired key is current; any other unretired one (several workers starting at
    # once used to make two) retires now, so the unique index below can hold.
    op.execute(
        "UPDATE signing_keys SET state = 'current', activated_at = created_at "
        "WHERE retired_at IS NULL AND kid = (SELECT kid FROM signing_keys "
        "WHERE retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1)"
    )
    op.execute(
        "UPDATE signing_keys SET retired_at = CURRENT_TIMESTAMP, activated_at = created_at "
        "WHERE state = 'retired' AND retired_at IS NULL"
    )
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.alter_column('state', server_default=None, existing_type=sa.String(length=16), existing_nullable=False)
        batch_op.create_index('uq_signing_keys_state_active', ['state'], unique=True, sqlite_where=ACTIVE, postgresql_where=ACTIVE)

    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kid', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.drop_column('kid')

    op.execute("UPDATE signing_keys SET retired_at = CURRENT_TIMESTAMP WHERE state != 'current' AND retired_at IS NULL")
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.drop_index('uq_signing_keys_state_active', sqlite_where=ACTIVE, postgresql_where=ACTIVE)
        batch_op.drop_column('activated_at')
        batch_op.drop_column('state')
        batch_op.alter_column('private_key', new_column_name='private_pem', existing_type=sa.Text(), existing_nullable=False)

    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('previous_secret_expires_at')
        batch_op.drop_column('previous_secret_hash')
