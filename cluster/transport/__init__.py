"""How members and clients reach a member: TLS identities, the HTTPS listener, the
pooled member-to-member client (``peers.py``) and the Raft port's password.

Below the API and the membership logic: nothing here imports ``cluster.api`` or
``cluster.membership`` (import-linter contracts).
"""
