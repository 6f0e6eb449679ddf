"""Who is in the cluster and how each member takes part.

``joining.py`` is the join protocol (tokens, accepting a member), ``raft_role.py`` keeps
this member's Raft role (voter or follower) in line with its roles in the state, and
``liveness/`` judges members online or offline on the leader's clock. Below the API:
nothing here imports ``cluster.api`` (an import-linter contract).
"""
