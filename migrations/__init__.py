"""Alembic environment and revisions: the only way Agora's schema changes."""
