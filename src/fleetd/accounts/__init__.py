"""Accounts: users, API keys and sessions, passwords, the audit log and the PKI."""
