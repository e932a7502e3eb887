"""The Celery chain that joins the features: stages, routing, release."""
