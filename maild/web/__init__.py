"""The resident-facing web pages (SPEC §8); see :mod:`maild.web.app`."""
