"""``python -m helpers``: the command line of :mod:`helpers.machinery.cli`."""
from .machinery.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
