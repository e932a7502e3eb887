"""Shared foundations: settings, database, the Celery app, the blob store, base errors."""
