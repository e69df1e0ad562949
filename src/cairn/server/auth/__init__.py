"""Users, tokens and permissions of ``cairn server --auth``.

* :mod:`~cairn.server.auth.permissions`: the permission levels and the authenticated :class:`Principal`.
* :mod:`~cairn.server.auth.hashing`: token and password hashing.
* :mod:`~cairn.server.auth.users`: the users, their grants and shared secrets, in the tracking database.
* :mod:`~cairn.server.auth.rules`: which permission every endpoint needs, on which resource.
* :mod:`~cairn.server.auth.middleware`: authentication and authorization of every request.
"""
