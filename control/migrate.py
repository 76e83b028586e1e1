"""Running the Alembic migrations from code, from a checkout or from an installed wheel."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

_PACKAGE_DIR = Path(__file__).resolve().parent


def migrations_dir() -> Path:
    """The wheel ships them as `control/_migrations`; a checkout has the top-level `alembic/`."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("the database migrations are missing from this installation")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # `%` is interpolation syntax in Alembic's config; URLs may contain it (escaped passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
