"""remembered consents name the resources (RFC 8707) they were given for

Revision ID: c8d4a7e15f93
Revises: b6e2f4a9c1d7

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c8d4a7e15f93'
down_revision = 'b6e2f4a9c1d7'
branch_labels = None
depends_on = None


def upgrade():
    # Every consent remembered so far was for a request without `resource`, or was taken as
    # one: '' is our own routes' audience (TOKENSERVER_AUDIENCE), which such a request is for.
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resources', sa.Text(), server_default='', nullable=False))
        batch_op.drop_constraint('pk_consents', type_='primary')
        batch_op.create_primary_key('pk_consents', ['user_id', 'client_id', 'scope', 'resources'])


def downgrade():
    # Back to one answer per scope set: a consent given only at some resource is forgotten,
    # so the user is asked again rather than taken to have allowed our own routes.
    op.execute("DELETE FROM consents WHERE resources <> ''")
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_constraint('pk_consents', type_='primary')
        batch_op.create_primary_key('pk_consents', ['user_id', 'client_id', 'scope'])
        batch_op.drop_column('resources')
