"""Allow ``python -m maild``."""

from maild.cli.main import main

raise SystemExit(main())
