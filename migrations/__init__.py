"""Alembic environment and revisions (a package so it ships with the distribution)."""
