"""The hawkBit DDI: per-device state, feedback, target and gateway tokens, its HTTP routes."""
