"""`python -m gateway`: see gateway.app.main."""

import sys

from gateway.app.main import main

if __name__ == "__main__":
    sys.exit(main())
