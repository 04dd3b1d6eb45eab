"""``python -m helpers``: the command line of :mod:`helpers.cli`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
