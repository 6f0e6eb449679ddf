"""The placement simulator: fake members and instances placed through a real State.

Not part of the daemon. It sits outside ``scheduler/`` because it drives the replicated
state (``cluster.state.apply``, ``RaftStore`` voters), which the scheduler, a leaf, may
not import. See README.md.
"""
