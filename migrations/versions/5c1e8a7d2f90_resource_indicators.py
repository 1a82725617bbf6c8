"""resource indicators (RFC 8707): client audiences, and the resources of codes and logins

Revision ID: 5c1e8a7d2f90
Revises: 103211adb2ab

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5c1e8a7d2f90'
down_revision = '103211adb2ab'
branch_labels = None
depends_on = None

TABLES = ('clients', 'token_families', 'authorization_codes')
COLUMNS = {'clients': 'audiences', 'token_families': 'resources', 'authorization_codes': 'resources'}


def upgrade():
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(COLUMNS[table], sa.Text(), nullable=False, server_default='')
            )


def downgrade():
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column(COLUMNS[table])
