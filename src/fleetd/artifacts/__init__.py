"""Artifacts: the catalog, uploads and RTOS images."""
