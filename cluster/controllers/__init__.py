"""Controllers: long work that runs only on the Raft leader.

::

    daemon --starts--> LeaderRuntime (runtime.py)
                         | polls leads(); on gaining leadership commits controller.claim
                         | -> epoch n; runs every Controller.run(lease) in a TaskGroup
                         v
        LivenessController (liveness.py)   VotersController (voters.py)   (moves, evacuations)
                         | commands carrying epoch n (and intent + from_phase for an intent)
                         v
                    Raft --apply--> apply_intents.fence: refused unless n is still current

A controller sees only its ``Lease`` (store, epoch, member name, peer client, waiters),
never the API's Context; it is cancelled and awaited when leadership or the epoch is lost.
"""
