"""Benchmark of onitufs against a minimal in-memory FUSE filesystem, tmpfs, rclone mount,
sshfs and plain disk.

Run it as `python -m bench` (or `make bench`); `--size-mib` and `--files`
shrink the run for a quick check, `python -m bench programs` runs only the
real-programs suite. See bench/__main__.py for what it measures.
"""
