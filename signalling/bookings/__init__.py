"""Scheduled sessions: booking rules, the tables that take each slot once (SQLite or PostgreSQL),
the scheduler that sends reminders and opens sessions, and their REST API. May import ``core``,
``auth`` and ``experts``."""
