"""Telemetry: intake of device points and their rollups."""
