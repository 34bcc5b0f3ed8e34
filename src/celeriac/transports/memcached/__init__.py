"""memcached: a result backend only (memcached keeps no queues)."""
