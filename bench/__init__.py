"""maild's benchmark suite (issue 5): ``python -m bench`` or ``make bench``; see README.md."""
