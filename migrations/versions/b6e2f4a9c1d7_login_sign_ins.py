"""logins keep the sign-in they came from: auth_time and sid of their refreshed id_tokens

Revision ID: b6e2f4a9c1d7
Revises: 6b1f0e9c4d27

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b6e2f4a9c1d7'
down_revision = '6b1f0e9c4d27'
branch_labels = None
depends_on = None

# A login whose code is still stored (codes are purged some time after they expire) gets the
# sign-in that code was given for; older logins keep none, and their id_tokens say none.
BACKFILL = """
UPDATE token_families SET
    auth_time = (SELECT c.auth_time FROM authorization_codes c WHERE c.family_id = token_families.id),
    session_id = (SELECT c.session_id FROM authorization_codes c WHERE c.family_id = token_families.id)
WHERE id IN (SELECT family_id FROM authorization_codes WHERE family_id IS NOT NULL)
"""


def upgrade():
    with op.batch_alter_table('token_families', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auth_time', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('session_id', sa.String(length=32), nullable=True))
    op.execute(BACKFILL)


def downgrade():
    with op.batch_alter_table('token_families', schema=None) as batch_op:
        batch_op.drop_column('session_id')
        batch_op.drop_column('auth_time')
