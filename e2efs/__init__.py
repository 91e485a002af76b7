"""e2efs: end-to-end encrypted backups for chat apps, as a FUSE filesystem."""

__version__ = "0.1.0"
