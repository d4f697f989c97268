"""maild: the mail daemon behind a police safety-alert service (みやぎSecurityメール)."""

__version__ = "0.1.0"
