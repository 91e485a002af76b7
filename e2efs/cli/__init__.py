"""The ``e2efs`` command."""
