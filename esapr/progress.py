"""What a run shows while it trains: redrawn bars on a terminal, one plain line per epoch when the
output is a file or a pipe (a log file never fills with escape codes), nothing but errors when
quiet, and in a notebook one line of text redrawn in place (``NotebookProgress``)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

MODES = ("auto", "bar", "lines", "quiet")


def seconds(value) -> str:
    """A duration as people read it: 0.04 s, 3.2 s, 48 s, 12.5 min, 3.6 h ("?" when unknown)."""
    if value is None or value != value:
        return "?"
    value = float(value)
    if value < 10:
        return f"{value:.2g} s" if value < 1 else f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


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


def make_progress(mode) -> "Progress":
    """A Progress as asked (an instance is kept); "auto" (or True) in a notebook is one line of
    text redrawn in place, which still reads in the saved notebook."""
    if isinstance(mode, Progress):
        return mode
    if mode in ("auto", True) and "ipykernel" in sys.modules:
        return NotebookProgress()
    return Progress(mode)


def _interactive(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class NotebookProgress(Progress):
    """Progress as ONE line of text redrawn in place (an updatable display), so the saved
    notebook shows where the run ended ("training: 100%| 3/3 epochs ... best 0.27@3") rather than
    a widget's first frame or one frozen bar per epoch. Messages are printed as plain lines."""

    def __init__(self, every_seconds: float = 0.5):
        super().__init__("lines")
        self.every_seconds = every_seconds
        self._handle = None
        self._total = None
        self._epoch = 0
        self._started = 0.0
        self._values: dict = {}
        self._shown = 0.0

    def line(self, text: str) -> None:
        print(text, flush=True)

    def start_epochs(self, total, initial: int) -> None:
        from IPython.display import display
        self._total, self._epoch, self._started = total, initial, time.monotonic()
        self._handle = display(_Text(self._text()), display_id=True)

    def batches(self, iterable, total: int, desc: str):
        for i, batch in enumerate(iterable, 1):
            yield batch
            if time.monotonic() - self._shown >= self.every_seconds:
                self._show(f"{desc}: batch {i}/{total}")

    def epoch_done(self, epoch: int, values: dict) -> None:
        self._epoch, self._values = epoch, dict(values)
        self._show("")

    def close(self) -> None:
        self._show("done")
        self._handle = None

    def _text(self, extra: str = "") -> str:
        from tqdm import tqdm
        elapsed = time.monotonic() - self._started
        if self._total:
            meter = tqdm.format_meter(self._epoch, self._total, elapsed, prefix="training", unit="epoch", ncols=60)
        else:   # until early stopping: no total to measure against
            meter = f"training: epoch {self._epoch} [{tqdm.format_interval(elapsed)}]"
        values = "  ".join(f"{key} {value}" for key, value in self._values.items())
        return "  ".join(part for part in (meter, values, extra) if part)

    def _show(self, extra: str) -> None:
        self._shown = time.monotonic()
        if self._handle is not None:
            self._handle.update(_Text(self._text(extra)))


class _Text:
    """A display object that is only text (no widget state to lose when the notebook is saved)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text
