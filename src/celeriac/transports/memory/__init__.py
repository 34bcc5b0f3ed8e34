"""The in-process transport: broker, result backend and beat store for tests and one process."""
