"""What a run shows while it trains: redrawn bars on a terminal or in a notebook, one plain line
per epoch when the output is a file or a pipe (a log file never fills with escape codes), and
nothing but errors when quiet."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator

MODES = ("auto", "bar", "lines", "quiet")


class Progress:
    def __init__(self, mode: str | bool = "auto", stream=None):
        self.stream = stream or sys.stderr
        if mode is True or mode == "auto":
            mode = "bar" if _interactive(self.stream) else "lines"
        self.mode = "quiet" if mode is False else mode
        if self.mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._bar = None

    def line(self, text: str) -> None:
        """A message of its own line (kept clear of a bar being drawn)."""
        if self.mode == "quiet":
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def batches(self, iterable: Iterable, total: int, desc: str) -> Iterator:
        """The batches of one epoch, with a bar that disappears at the end (bars only)."""
        if self.mode != "bar":
            return iter(iterable)
        from tqdm.auto import tqdm
        return iter(tqdm(iterable, total=total, desc=desc, leave=False, file=self.stream))

    def start_epochs(self, total: int | None, initial: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, desc="training", unit="epoch", file=self.stream)

    def epoch_done(self, epoch: int, values: dict) -> None:
        """After each epoch: the bar's postfix, or one line ``epoch N  key value ...``."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(values)
        elif self.mode == "lines":
            self.line(f"epoch {epoch}  " + "  ".join(f"{key} {value}" for key, value in values.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _interactive(stream) -> bool:
    """A terminal, or a notebook (where tqdm.auto draws widgets)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
