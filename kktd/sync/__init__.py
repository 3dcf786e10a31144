"""The sync engine: delivers journaled FDs upstream under a breaker, a backoff and a fenced lock.

Pure cores: `breaker` and `backoff` (clock and randomness injected). Components: `lock` (the
protocol and the in-process lock), `redis_lock` (Redis lease with fencing, SPEC section 3, loaded
only with `lock.redis_url`), `client` (upstream HTTP) and `engine` (rounds, manual sync).
"""
