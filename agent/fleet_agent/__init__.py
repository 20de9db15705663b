"""fleet-agent: the fleetd device agent for Linux boards (Raspberry Pi and friends).

Standard library plus httpx, zeroconf and cryptography; never imports fleetd.
"""

__version__ = "0.1.0"
