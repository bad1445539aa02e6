"""How far a long command is and the time it has left, outside Lightning's loops (vae-eval's scoring): a bar on
a terminal; when the output is not one (a batch job, nohup, a pipe), a plain log line every `every` seconds,
as training does once per epoch."""

import logging
import sys
import time
from datetime import timedelta

from tqdm import tqdm

log = logging.getLogger("vae_cli")


class Progress:
    """Called with the number of items just done; a context manager that closes the bar."""

    def __init__(self, total: int, what: str, every: float = 60.0, bar: bool | None = None):
        self.total, self.what, self.every = total, what, every
        self.done = 0
        self.started = self.shown = time.monotonic()
        show_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = tqdm(total=total, desc=what, unit="", leave=False, file=sys.stderr) if show_bar else None

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)  # the bar shows elapsed<left itself, and redraws at most ten times a second
            return
        now = time.monotonic()
        if now - self.shown >= self.every and 0 < self.done < self.total:
            self.shown = now
            elapsed = now - self.started
            left = elapsed / self.done * (self.total - self.done)
            log.info(
                "%d/%d %s (%d%%), %s so far, about %s left",
                self.done,
                self.total,
                self.what,
                100 * self.done // self.total,
                timedelta(seconds=round(elapsed)),
                timedelta(seconds=round(left)),
            )

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
