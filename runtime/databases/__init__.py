"""Each session's private database: a SQLite file, or a PostgreSQL database and role."""
