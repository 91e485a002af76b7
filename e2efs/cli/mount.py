"""mount / unmount / status: placeholder until the mount lands."""


def register(sub) -> None:
    pass
