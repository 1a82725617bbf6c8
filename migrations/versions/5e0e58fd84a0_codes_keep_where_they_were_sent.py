"""authorization codes keep where they were sent, even when the request named no redirect_uri

Revision ID: 5e0e58fd84a0
Revises: c8d4a7e15f93

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5e0e58fd84a0'
down_revision = 'c8d4a7e15f93'
branch_labels = None
depends_on = None


def upgrade():
    # No backfill: a code lives 60 s, and one stored before (sent_to NULL) is checked at the
    # exchange by its redirect_uri, as it was when it was issued.
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_to', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('authorization_codes', schema=None) as batch_op:
        batch_op.drop_column('sent_to')
