"""Benchmark of onitufs against a minimal in-memory FUSE filesystem and tmpfs.

Run it as `python -m bench` (or `make bench`); `--size-mib` and `--files`
shrink the run for a quick check. See bench/__main__.py for what it measures.
"""
