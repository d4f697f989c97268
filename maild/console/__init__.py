"""The approvers' web console (issue 16): accounts, sign-in, and the pages that review,
adjust, approve and watch alerts through the same workflow as the ``maild`` command."""
