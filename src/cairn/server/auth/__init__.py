"""Users, tokens and permissions of ``cairn server --auth``.

* :mod:`~cairn.server.auth.permissions`: the permission levels and the authenticated :class:`Principal`.
* :mod:`~cairn.server.auth.hashing`: token and password hashing.
* :mod:`~cairn.server.auth.users`: the users, their grants and shared secrets, in the tracking database.
* :mod:`~cairn.server.auth.rules`: which permission every endpoint needs, on which resource (the allow-list).
* :mod:`~cairn.server.auth.credentials`, :mod:`~cairn.server.auth.resolve`, :mod:`~cairn.server.auth.middleware`:
  who a request is, what it touches, and the ASGI middleware that decides before any handler runs.
* :mod:`~cairn.server.auth.session`: the UI's signed session cookies.
* :mod:`~cairn.server.auth.cli`: ``cairn users ...``.
"""
