"""Alerts: the rule engine, incidents, webhooks and their egress guard."""
