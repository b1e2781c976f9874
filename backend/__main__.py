"""``python -m backend`` starts the Label Studio ML backend service (see docs/service.md)."""

import sys

from backend.service.server import main

if __name__ == "__main__":
    sys.exit(main())
