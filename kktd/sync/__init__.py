"""The sync engine: delivers journaled FDs upstream under a breaker, a backoff and a fenced lock.

Pure cores: `breaker` and `backoff` (clock and randomness injected). Components: `lock` (Redis
lease with fencing, SPEC section 3), `client` (upstream HTTP) and `engine` (rounds, manual sync).
"""
