"""Runs nx-27017 with its per-command INFO logging turned down to warnings (it logs every query)."""

import logging
import sys

from nx_27017.nx_27017 import main

if __name__ == "__main__":
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    sys.exit(main())
