"""Prompt policy and (later) the human review queue."""
