"""Alembic environment: the models' metadata, the URL from settings unless one is given."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from control.kit.db import make_engine
from control.models import metadata
from control.settings import Settings

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or Settings().sqlalchemy_url
if url.startswith("postgresql://"):
    url = "postgresql+psycopg://" + url[len("postgresql://") :]


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
