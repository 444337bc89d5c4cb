"""The Docker backend: one engine, the session's volume on this disk or on the engine's host."""
