"""Remote access (docs/remote-access.md): the device channel, sessions on it, their limits and their audit.

frames.py (the channel's framing) and hub.py (channels, sessions, grants, caps, idle timeout) import no HTTP;
api.py holds the routes and is imported only when the server runs with ``remote_access`` on.
"""
