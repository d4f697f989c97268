"""The error of the alert workflow's actions, apart so that the modules the workflow
uses (:mod:`maild.alerts.privacy_gate`) can raise it too."""


class AlertActionError(Exception):
    """An operator's action that the alert's state or the rules do not allow."""
