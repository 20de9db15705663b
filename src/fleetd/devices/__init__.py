"""Devices: enrollment, join tokens, the registry and claim codes, the in-memory hub, presence, actions, tags."""
