"""The outgoing side: calls to the model servers (pool, upstream client, admission, breaker, probes)."""
