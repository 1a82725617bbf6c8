import logging
from contextlib import contextmanager
from logging.config import fileConfig

from flask import current_app

from alembic import context

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging.
# This line sets up loggers basically. Loggers that exist already (the service's own, such as
# tokenserver.audit, when migrating in-process) must keep working, so none is disabled.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger('alembic.env')


def get_engine():
    try:
        # this works with Flask-SQLAlchemy<3 and Alchemical
        return current_app.extensions['migrate'].db.engine
    except (TypeError, AttributeError):
        # this works with Flask-SQLAlchemy>=3
        return current_app.extensions['migrate'].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace(
            '%', '%%')
    except AttributeError:
        return str(get_engine().url).replace('%', '%%')


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option('sqlalchemy.url', get_engine_url())
target_db = current_app.extensions['migrate'].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=get_metadata(), literal_binds=True
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    with connectable.connect() as connection:
        sqlite = connection.dialect.name == 'sqlite'
        if sqlite:
            _sqlite_foreign_keys(connection, on=False)
        context.configure(
            connection=connection,
            target_metadata=get_metadata(),
            **conf_args
        )

        try:
            with context.begin_transaction(), _one_migrator_at_a_time(connection):
                context.run_migrations()
            if sqlite:
                _check_sqlite_foreign_keys(connection)
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)


# The PostgreSQL advisory lock every migrator takes ("tokensrv" in ASCII).
MIGRATORS_LOCK = 0x746F6B656E737276


@contextmanager
def _one_migrator_at_a_time(connection):
    """Let one migrator run at a time: several nodes may run `db upgrade` at once on release.
    The next one reads the schema's version only once the first is done, and finds it at head.

    On PostgreSQL an advisory lock, held to the end of the migration's transaction. On SQLite,
    whose DDL here commits statement by statement, the writers' lock (sqlite_writers.py).
    """
    if connection.dialect.name == 'postgresql':
        connection.exec_driver_sql(f'SELECT pg_advisory_xact_lock({MIGRATORS_LOCK})')
        yield
        return
    writers = getattr(connection.connection.dbapi_connection, 'writers', None)
    if writers is None:  # an in-memory database: no other migrator can see it
        yield
        return
    writers.take()
    try:
        yield
    finally:
        writers.give_back()


def _sqlite_foreign_keys(connection, *, on):
    """Turn SQLite's foreign key enforcement on or off for this connection.

    Off while migrating: a batch operation rebuilds a table (copy, DROP, rename), and with
    foreign keys on, the DROP first deletes every row, cascading through ON DELETE CASCADE into
    each child table (dropping `clients` would empty the token, code and consent tables). SQLite's
    own procedure for altering a table does the same (https://sqlite.org/lang_altertable.html).
    The pragma is a no-op inside a transaction: the one SQLAlchemy began for it is ended here.
    """
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    connection.commit()


def _check_sqlite_foreign_keys(connection):
    """Refuse to finish a migration that left rows pointing at rows that do not exist."""
    orphans = connection.exec_driver_sql('PRAGMA foreign_key_check').all()
    connection.commit()
    if orphans:
        tables = sorted({row[0] for row in orphans})
        raise RuntimeError(f"migration left broken foreign keys in: {', '.join(tables)}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
