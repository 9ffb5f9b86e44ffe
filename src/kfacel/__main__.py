"""``python -m kfacel``."""

from kfacel.cli import main

raise SystemExit(main())
