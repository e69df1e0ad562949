"""``cairn server``: MLflow's REST API over a cairn store, the artifact proxy and the UI, in one ASGI app.

The server is a stateless HTTP front over the same store (SQLite or PostgreSQL) and artifact root
that embedded cairn uses; it is not a new store. Build the app with
:func:`cairn.server.app.create_server_app`.
"""
