"""Rollouts: the service, its steps and rules, progress and the orchestrator."""
