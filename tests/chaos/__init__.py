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

How the suite uses it::

    rec = Recorder()
    op = rec.invoke("c1", Kind.CAS, "config/user.k1", value="c1-7", expected=seen, member="m2")
    ...  # PUT with If-Match: rec.ok(op) on 200, rec.fail(op, "412 ...") on a 4xx,
         # rec.unknown(op, "timeout") on a timeout, a lost connection or a 5xx
    history = rec.history(final={member: snapshot_of(member) for member in members})
    history.dump(run_dir / "history.json")
    summary = summarize(check(history), faults=n, replicas_agree=agree, convergence=secs)
    print(summary.line()); assert summary.ok, "\n".join(summary.failures)

The checker (history, durability, linearizability, checker) imports nothing of
``cluster``, ``node_agent`` or ``scheduler``: it must judge the cluster from the outside, as
a client sees it. The driver does: ``run.py`` (clients, the run), ``instances.py``
(container operations), ``faults.py`` (the nemesis, over ``devtools.nemesis`` and
``devtools.nemesis_disk``) and ``api.py`` (requests to a member's socket).

HA has a checker and a driver of its own: ``ha_checker.py`` (pure: no instance on two
hosts in any /proc sample, a failover's counter loss within one replication interval
plus the detection time, no returned host running an instance that left it) and
``ha_run.py`` (HA containers counting in their rootfs while a host is killed whole,
cut off or frozen), run by ``test_ha_profile.py``.
"""
