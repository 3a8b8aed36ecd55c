"""One progress reporter for every long stage (pre-training, fine-tuning, data generation, the
latency dataset, the predictor fit, candidate enumeration, speedup measurement).

On a terminal it draws a tqdm bar. Off one (a log file, a batch job's output) a bar would write
carriage-return frames into the log, so it logs a line instead: the count, the rate and the ETA,
at most every `seconds` (the stage's default, or SUPERBERT_PROGRESS_SECONDS: see
`cli.progress_seconds`), every `every` items if asked, and once at the end for the items since
the last line. A stage that wants its own line (a loss, tokens per second) passes `line`, which
gets a `Tick`; the lines go to the stage's logger, so they carry its name.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from .cli import progress_seconds

DEFAULT_SECONDS = 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class Tick:
    """Where a loop stands when a progress line is written."""

    done: int
    total: int
    initial: int  # already done when this run started (a resumed run): not in the rate
    elapsed: float  # seconds since the reporter started
    postfix: str = ""

    @property
    def rate(self) -> float:
        """Items per second over this run."""
        return (self.done - self.initial) / max(self.elapsed, 1e-9)

    @property
    def seconds_per_item(self) -> float:
        return self.elapsed / max(self.done - self.initial, 1)

    @property
    def eta(self) -> float:
        """Seconds left at the rate so far (inf before the first item)."""
        left = max(self.total - self.done, 0)
        if left == 0:
            return 0.0
        return left / self.rate if self.rate > 0 else math.inf

    @property
    def percent(self) -> float:
        return 100 * self.done / max(self.total, 1)


def duration(seconds: float) -> str:
    """`1h02m` or `3m05s`; `?` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def on_a_terminal() -> bool:
    """Whether a bar can be drawn: tqdm draws on stderr."""
    return sys.stderr.isatty()


class Progress:
    """A long loop's progress: a bar on a terminal, log lines off one, nothing when disabled.

    `enabled=False` reports nothing; `bar=False` never draws a bar (lines only, e.g. a
    `--no_progress` that keeps the log lines). `tty` overrides the terminal check (tests).
    Extra keyword arguments go to tqdm (`unit_scale`, `leave`, `dynamic_ncols`, ...).
    """

    def __init__(self, total: int, desc: str, *, unit: str = "step", initial: int = 0,
                 seconds: float | None = None, every: int | None = None, enabled: bool = True,
                 bar: bool = True, tty: bool | None = None,
                 line: Callable[[Tick], str] | None = None,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic,
                 **bar_options: Any):
        self.total, self.desc, self.unit, self.initial = int(total), desc, unit, int(initial)
        self.done = self.last_done = self.initial
        self.seconds = progress_seconds(DEFAULT_SECONDS) if seconds is None else seconds
        self.every, self.line, self.clock = every, line, clock
        self.logger = logger or logging.getLogger(__name__)
        self.postfix = ""
        tty = on_a_terminal() if tty is None else tty
        self.bar = (tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit,
                         **bar_options) if enabled and bar and tty else None)
        self.logs = enabled and self.bar is None
        self.start = self.last = clock()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.logs:
            now = self.clock()
            due = now - self.last >= self.seconds
            if self.every:
                due = due or self.done % self.every == 0
            if due or self.done >= self.total:
                self._write(now)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, each counted done when the loop asks for the next; closed at the end."""
        for item in items:
            yield item
            self.update()
        self.close()

    def update_to(self, done: int) -> None:
        """Advance to `done` items (a position, e.g. bytes read)."""
        if done > self.done:
            self.update(done - self.done)

    def set_postfix(self, text: str = "", **values: Any) -> None:
        """Shown after the bar, and at the end of the default log line."""
        parts = [text] if text else []
        parts += [f"{k}={v}" for k, v in values.items()]
        self.postfix = ", ".join(parts)
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix, refresh=False)

    def close(self) -> None:
        """Close the bar; off a terminal, a last line for the items since the last one."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.logs and self.done > self.last_done:
            self._write(self.clock())
        self.logs = False

    def _write(self, now: float) -> None:
        self.last, self.last_done = now, self.done
        tick = Tick(self.done, self.total, self.initial, now - self.start, self.postfix)
        self.logger.info("%s", self.line(tick) if self.line else self.default_line(tick))

    def default_line(self, tick: Tick) -> str:
        text = (f"{self.desc}: {tick.done}/{tick.total} {self.unit} ({tick.percent:.0f}%), "
                f"{tick.rate:.3g} {self.unit}/s, ETA {duration(tick.eta)}")
        return f"{text}, {tick.postfix}" if tick.postfix else text
