"""Dev-cluster tooling: network-namespace hosts, daemon harnesses, fault injection, teardown.

Nothing in the product (``cluster``, ``node_agent``, ``scheduler``) imports this package;
tests, benchmarks and the CLI's ``dev-cluster`` verb do (the verb imports it lazily).
"""
