"""The chaos suite's checker: pure functions over a recorded history (no cluster needed).

The suite that drives a real cluster records every request and its outcome in a
:class:`~tests.chaos.history.History` and hands it, with each member's final state, to
:func:`~tests.chaos.checker.check`::

    clients --Recorder--> History (ops, initial, final) --JSON--> post-mortem file
                              |
                          check(history)
                     /                    \\
    durability.check_durability     linearizability.check_linearizable
    (acknowledged writes present,   (each key is a register: Wing & Gong 1993
     acknowledged deletes absent,    search with Lowe 2017's cache, as
     on every member)                Porcupine and Knossos do)
                     \\                    /
                  Report --summarize(faults, agree, convergence)--> Summary.line()

Nothing here imports ``cluster``, ``node_agent`` or ``scheduler``: the checker must judge the
cluster from the outside, as a client sees it.
"""
