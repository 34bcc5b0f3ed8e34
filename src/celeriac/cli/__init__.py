"""The ``celeriac`` command: thin click commands over the public API."""
