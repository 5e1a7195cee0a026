"""Run the command line as `python -m onitufs`."""

from .cli import main

main()
