"""Pusher's Channels protocol on Chloe: pusher-js, Laravel Echo and the Pusher
server libraries, unchanged, on the same hub, backends, relay, limits and
metrics as Chloe's own protocol.

- :mod:`~chloed.pusher.apps`: the ``[[pusher.apps]]`` of the config;
- :mod:`~chloed.pusher.names`: Pusher channel names, and each app's
  namespace in the backend;
- :mod:`~chloed.pusher.wire`: the frames, and Chloe's frames as Pusher's;
- :mod:`~chloed.pusher.auth`: the signatures, checked in constant time;
- :mod:`~chloed.pusher.protocol`: what a client's frames do;
- :mod:`~chloed.pusher.socket`: the ``/app/{key}`` WebSocket;
- :mod:`~chloed.pusher.api`: the HTTP API (``/apps/{id}/...``);
- :mod:`~chloed.pusher.webhooks`: the webhooks, through Chloe's relay.
"""
