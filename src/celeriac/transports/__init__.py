"""One package per technology: connection handling, broker, result backend and beat store."""
