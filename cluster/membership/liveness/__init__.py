"""Failure detection: the Raft leader judges members' liveness on its own clock.

::

    node agent --member.heartbeat--> Raft --applied--> leader's liveness controller
                                                   (cluster/controllers/liveness.py)
                                                         | heard(name, beats) at monotonic now
                                                         v
                                                   LivenessTracker (tracker.py, pure)
                                                         | transitions(committed)
                                                         v
                            Raft <--member.liveness {name, status, beats, epoch}-- controller

Heartbeats carry the sender's wall clock only for display; no clock is ever compared
with another member's. Only transitions (ONLINE -> OFFLINE -> ONLINE) are committed,
and apply re-checks each one against the heartbeat count (``apply_members``) and the
controller's epoch (``apply_intents.fence``).
"""
