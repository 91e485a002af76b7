"""Progress of long operations: a bar with throughput and ETA on a terminal
(tqdm, rather than hand-rolled escape codes), a plain line every few seconds
otherwise, nothing with --quiet."""

import os
import sys
import time

from .common import human

PLAIN_INTERVAL = 10.0


def folder_bytes(root: str) -> int:
    """Total size of the regular files under ``root``: the denominator of a progress bar."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class Progress:
    """Called once per file with (path, bytes done for it)."""

    def __init__(self, verb: str, total_bytes: int, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.verb, self.total, self.quiet = verb, total_bytes, quiet
        self.done = self.files = 0
        self.started = self._last_line = time.monotonic()
        self._bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm      # 40 ms to import: only when a bar is drawn
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=verb,
                             file=self.stream, leave=False, dynamic_ncols=True)

    def __call__(self, path: str, nbytes: int) -> None:
        self.files += 1
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
            return
        now = time.monotonic()
        if not self.quiet and now - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            print(f"{self.verb}: {self.files} files, {human(self.done)} of {human(self.total)}, "
                  f"{human(rate)}/s, about {left:.0f} s left", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
