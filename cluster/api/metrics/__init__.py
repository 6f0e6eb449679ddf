"""``/1.0/metrics``: LXD's instance and server metrics, and corral's own (Raft, members,
API, HA), for one member or, with ``scope=cluster``, every member under a ``member``
label. Collection is split from rendering so that a scrape is served from a cache the
background refreshes (``cache.py``) and never waits on a lock."""
