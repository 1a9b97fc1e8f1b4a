"""Progress of a long action as plain data: what is done, of how much, how long it took, how long is left.

What enters: the (done, total) counts a stage reports (observer: samples and tokens; fidelity:
forward passes; evaluations: answers; export: a fraction and a message). What leaves: a
`ProgressState` with elapsed seconds and an ETA, and one human line for it. The app draws the
state as a bar; the CLI prints it (`TerminalProgress`: a redrawn bar on a terminal, a few plain
lines when stderr is piped to a file, never hundreds of carriage-return frames).

Why here and not in the UI: the CLI and the app must say the same thing about the same work.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO


def human_seconds(seconds: float) -> str:
    """4 s, 1 min 05 s, 2 h 03 min: short and unambiguous."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class ProgressState:
    """One snapshot. `total` 0 = not known yet (nothing started); `eta` None = too early to tell."""
    what: str              # "Calibration", "Fidelity sweep", …
    done: float
    total: float
    unit: str              # "tokens", "forward passes", "answers", "%"
    elapsed: float         # seconds since the action started
    eta: float | None      # seconds still to go, from the rate so far
    detail: str = ""       # the stage's own message ("verifying: reloading the export")

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 0.0

    def counts(self) -> str:
        if not self.total:
            return "starting"
        if self.unit == "%":
            return f"{self.fraction:.0%}"
        return f"{self.done:,.0f} / {self.total:,.0f} {self.unit}"

    def timing(self) -> str:
        left = "estimating time left" if self.eta is None else f"about {human_seconds(self.eta)} left"
        return f"{human_seconds(self.elapsed)} elapsed · {left}"

    def line(self) -> str:
        """'Calibration: 558 / 9,320 tokens (6%) · 12 s elapsed · about 3 min 10 s left — detail'."""
        pct = "" if self.unit == "%" or not self.total else f" ({self.fraction:.0%})"
        detail = f" — {self.detail}" if self.detail else ""
        return f"{self.what}: {self.counts()}{pct} · {self.timing()}{detail}"


class ProgressClock:
    """Turns (done, total) reports into `ProgressState`s with elapsed time and an ETA.

    Thread-safe: a worker thread reports, another thread (the UI's poll) reads `latest`.
    The ETA is the average rate since the first report that moved (model loading and warm-up
    before the first step do not count), so it settles after a couple of steps.
    """

    def __init__(self, what: str, unit: str, clock: Callable[[], float] = time.monotonic):
        self.what, self.unit, self._clock = what, unit, clock
        self.start = clock()
        self._first: tuple[float, float] | None = None   # (time, done) of the first report
        self._lock = threading.Lock()
        self._state = ProgressState(what, 0, 0, unit, 0.0, None)

    def update(self, done: float, total: float, detail: str = "") -> ProgressState:
        now = self._clock()
        with self._lock:
            if self._first is None:
                self._first = (now, float(done))
            t0, d0 = self._first
            eta = None
            if done >= total > 0:
                eta = 0.0
            elif done > d0 and now > t0:      # the rate since the first step
                eta = (total - done) * (now - t0) / (done - d0)
            elif done > 0 and now > self.start:   # one step so far: its rate, warm-up included
                eta = (total - done) * (now - self.start) / done
            self._state = ProgressState(self.what, float(done), float(total), self.unit, now - self.start, eta, detail)
            return self._state

    def fraction(self, fraction: float, detail: str = "") -> ProgressState:
        """For stages that report a fraction and a message (export, push)."""
        return self.update(round(min(max(fraction, 0.0), 1.0) * 100, 1), 100, detail)

    @property
    def latest(self) -> ProgressState:
        """The last state, with the elapsed time brought up to now (the bar's clock keeps moving)."""
        with self._lock:
            s = self._state
        elapsed = self._clock() - self.start
        eta = None if s.eta is None else max(0.0, s.eta - (elapsed - s.elapsed))
        return ProgressState(s.what, s.done, s.total, s.unit, elapsed, eta, s.detail)


class TerminalProgress:
    """CLI progress on stderr. On a terminal: one line redrawn in place (at most ~4 times a second).
    Piped or redirected: a new line only every `every` seconds or 10% of the work, so a log file
    gets a dozen lines, not one per step."""

    def __init__(self, what: str, unit: str, stream: TextIO | None = None, every: float = 15.0):
        self.clock = ProgressClock(what, unit)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self._last_time = -1e9
        self._last_tenth = -1
        self._drawn = False

    def _emit(self, state: ProgressState, force: bool = False) -> None:
        now = state.elapsed
        if self.tty:
            if force or now - self._last_time >= 0.25:
                self.stream.write("\r\033[K" + state.line()[:160])
                self.stream.flush()
                self._last_time, self._drawn = now, True
            return
        tenth = int(state.fraction * 10)
        if force or tenth > self._last_tenth or now - self._last_time >= self.every:
            self.stream.write(state.line() + "\n")
            self.stream.flush()
            self._last_time, self._last_tenth = now, tenth

    def update(self, done: float, total: float, detail: str = "") -> None:
        self._emit(self.clock.update(done, total, detail))

    def fraction(self, fraction: float, detail: str = "") -> None:
        self._emit(self.clock.fraction(fraction, detail))

    def close(self) -> None:
        """End the line on a terminal (nothing was drawn: nothing to end)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
