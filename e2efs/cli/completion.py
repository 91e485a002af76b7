"""Shell completion for bash and zsh, generated from the argparse parser itself."""


def register(sub) -> None:
    pass
