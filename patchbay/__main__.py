"""``python -m patchbay``: the command line."""

from patchbay.cli import main

main()
