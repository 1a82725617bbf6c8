"""token exchange (RFC 8693): the access token an exchanged one came from

Revision ID: 6b1f0e9c4d27
Revises: f3a8d61c2b57

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '6b1f0e9c4d27'
down_revision = 'f3a8d61c2b57'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_jti', sa.String(length=64), nullable=True))
        batch_op.create_index(
            'ix_token_records_parent_jti',
            ['parent_jti'],
            unique=False,
            sqlite_where=sa.text('parent_jti IS NOT NULL'),
            postgresql_where=sa.text('parent_jti IS NOT NULL'),
        )


def downgrade():
    with op.batch_alter_table('token_records', schema=None) as batch_op:
        batch_op.drop_index(
            'ix_token_records_parent_jti',
            sqlite_where=sa.text('parent_jti IS NOT NULL'),
            postgresql_where=sa.text('parent_jti IS NOT NULL'),
        )
        batch_op.drop_column('parent_jti')
