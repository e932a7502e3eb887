"""Alembic migrations for every table. `clearance db upgrade` runs them."""
