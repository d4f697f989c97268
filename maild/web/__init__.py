"""The resident-facing web pages (docs/web-routes.md); see :mod:`maild.web.app`."""
