"""The control surface: the local HTTP API, its client commands and the metrics."""
