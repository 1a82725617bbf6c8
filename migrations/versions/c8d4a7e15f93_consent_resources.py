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


# The key of a resource set is its SHA-256 (hex), fixed in width: the set has no length cap, and
# PostgreSQL refuses an index entry past about 2.7 kB. Every row so far is for the empty set.
NO_RESOURCES_DIGEST = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'


def upgrade():
    # Every consent remembered so far was for a request without `resource`, or was taken as
    # one: '' is our own routes' audience (TOKENSERVER_AUDIENCE), which such a request is for.
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resources', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(
            sa.Column(
                'resources_digest',
                sa.String(length=64),
                server_default=NO_RESOURCES_DIGEST,
                nullable=False,
            )
        )
        batch_op.drop_constraint('pk_consents', type_='primary')
        batch_op.create_primary_key(
            'pk_consents', ['user_id', 'client_id', 'scope', 'resources_digest']
        )
    # The digest is always given from now on: none is taken for granted.
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.alter_column('resources_digest', server_default=None)


def downgrade():
    # Back to one answer per scope set: a consent given only at some resource is forgotten,
    # so the user is asked again rather than taken to have allowed our own routes.
    op.execute("DELETE FROM consents WHERE resources <> ''")
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_constraint('pk_consents', type_='primary')
        batch_op.create_primary_key('pk_consents', ['user_id', 'client_id', 'scope'])
        batch_op.drop_column('resources_digest')
        batch_op.drop_column('resources')
