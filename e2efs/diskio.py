"""Positional writes that finish: ``os.pwrite`` may write less than asked
(a signal, a file system's own limit), and every caller needs all of it."""

import os


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
