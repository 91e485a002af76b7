"""Commands that need no mount: init, info, import, export, ls, cat, fsck."""


def register(sub) -> None:
    pass
