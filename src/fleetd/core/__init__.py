"""The ground floor: settings, errors, clocks and ids, names, events, effects and small helpers.

Nothing here imports another fleetd package."""
