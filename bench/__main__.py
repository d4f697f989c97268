"""``python -m bench [--quick] [--sizes 10k,100k,1M] …``: run the suite (see README.md)."""

import sys

from bench.suite import main

sys.exit(main())
