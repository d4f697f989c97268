"""Allow ``python -m maild``."""

from maild.cli import main

raise SystemExit(main())
