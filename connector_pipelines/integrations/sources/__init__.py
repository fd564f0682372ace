"""Source adapters: how an integration reads records from (and acts back on) one system.

Each module here has a ``from_resources(integration, resources)`` and is registered by name in
``integrations.registry`` (the only module that names every system).
"""
