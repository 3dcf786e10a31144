"""The control surface's server: the local HTTP API and the metrics (its client is `kktd.cli`)."""
