"""`python -m plugin ...`: see `plugin.cli`."""

from plugin.cli import main

raise SystemExit(main())
