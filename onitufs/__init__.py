"""onitufs: every configured remote presented as one writable folder, kept in sync."""

__version__ = "0.1.0"
