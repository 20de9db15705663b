"""The SQLite store (connections, the writer and readers, migrations), the blob store and backups."""
