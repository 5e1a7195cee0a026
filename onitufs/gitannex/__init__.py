"""git-annex's external special remote protocol, shared by both of its sides in onitufs:
the `annex` driver, which runs a special remote program as git-annex does, and onitufs
as a special remote of git-annex. keys.py: keys and their directory hashes;
protocol.py: the line framing and the messages."""
