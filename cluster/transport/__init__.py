"""How members and clients reach a member: the HTTPS listener and who is trusted on it
(``https.py``), the pooled member-to-member client (``peers.py``) and the Raft port's
password (``raft_secret.py``). The certificate helpers are ``corral_shared.tls`` (the CLI
uses them too).

Below the API and the membership logic: nothing here imports ``cluster.api`` or
``cluster.membership`` (import-linter contracts).
"""
