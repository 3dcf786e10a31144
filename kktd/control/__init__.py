"""The control surface: the local HTTP API and what it reads of the running daemon."""
