"""Tamper-evident audit log: hash-chained, append-only events; chain verification."""
