"""The daemon's lifecycle: startup, wiring, supervision, signals, logging, sd_notify."""
