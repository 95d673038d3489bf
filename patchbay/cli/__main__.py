"""``python -m patchbay.cli``: the command line."""

from patchbay.cli import main

if __name__ == "__main__":
    main()
