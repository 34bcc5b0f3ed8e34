"""PostgreSQL: broker, result backend, beat store, events and remote control in one schema."""
