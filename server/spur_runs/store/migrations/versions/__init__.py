"""Revision scripts (loaded by Alembic from their files; this file only makes
the folder a package so that it ships with spur-runs)."""
