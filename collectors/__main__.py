"""`python -m collectors --spec datasets/quickstart.yaml [--out DIR] [--address auto]`."""

import sys

from collectors.collect import main

if __name__ == "__main__":
    sys.exit(main())
