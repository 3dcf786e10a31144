"""The tools that stand in for the world: the KKT emulator, the mock upstream, the demo."""
