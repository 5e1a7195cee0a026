"""onitufs driver for a folder in a Dropbox account, through the official SDK."""
