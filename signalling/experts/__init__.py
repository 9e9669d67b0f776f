"""Expert profiles, prices, working hours, search and ratings, their storage (SQLite or PostgreSQL)
and their REST API. May import ``core`` and ``auth``."""
