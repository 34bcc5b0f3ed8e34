"""The embedded default: broker, result backend and beat store in one SQLite file."""
