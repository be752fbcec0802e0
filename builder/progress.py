"""Build events and their renderers: plain (BuildKit's ``--progress=plain`` shape), tty (live
steps with timings, redrawn in place), json (one event per line) and quiet.

The engine only emits events; a renderer writes to the stream the CLI hands it (stderr).
Renderers are thread-safe (independent stages run in parallel). Stdlib only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol, TextIO


@dataclass(frozen=True, slots=True)
class StepStart:
    index: int
    total: int
    stage: str
    text: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class StepCached:
    index: int


@dataclass(frozen=True, slots=True)
class StepOutput:
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StepDone:
    index: int
    duration: float
    layer: str | None = None
    size: int | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StepFailed:
    index: int
    duration: float
    message: str


@dataclass(frozen=True, slots=True)
class Note:
    message: str
    level: str = "info"          # info | warning


@dataclass(frozen=True, slots=True)
class Explain:
    index: int
    reasons: tuple[str, ...] = field(default_factory=tuple)


Event = StepStart | StepCached | StepOutput | StepDone | StepFailed | Note | Explain


class Progress(Protocol):
    def emit(self, event: Event) -> None: ...
    def close(self) -> None: ...


class Quiet:
    def emit(self, event: Event) -> None:
        del event

    def close(self) -> None:
        pass


class Collect:
    """Keeps every event (tests, and ``--metadata-file``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def close(self) -> None:
        pass


def _label(ev: StepStart) -> str:
    stage = f"{ev.stage} " if ev.stage else ""
    return f"[{stage}{ev.index}/{ev.total}] {ev.text}"


class Plain:
    """Line-oriented, like ``docker buildx build --progress=plain``."""

    def __init__(self, stream: TextIO, *, explain: bool = False) -> None:
        self.stream = stream
        self.explain = explain
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._starts: dict[int, float] = {}
        self._partial: dict[int, str] = {}

    def _w(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def emit(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, StepStart):
                self._starts[event.index] = time.monotonic()
                self._w(f"#{event.index} {_label(event)}")
            elif isinstance(event, StepCached):
                self._w(f"#{event.index} CACHED")
            elif isinstance(event, StepOutput):
                elapsed = time.monotonic() - self._starts.get(event.index, self._t0)
                text = self._partial.pop(event.index, "") + event.data.decode("utf-8", "replace")
                lines = text.split("\n")
                self._partial[event.index] = lines.pop()
                for line in lines:
                    self._w(f"#{event.index} {elapsed:.3f} {line}")
            elif isinstance(event, StepDone):
                rest = self._partial.pop(event.index, "")
                if rest:
                    self._w(f"#{event.index} {rest}")
                self._w(f"#{event.index} DONE {event.duration:.1f}s")
            elif isinstance(event, StepFailed):
                self._partial.pop(event.index, None)
                self._w(f"#{event.index} ERROR: {event.message}")
            elif isinstance(event, Explain):
                if self.explain:
                    for reason in event.reasons:
                        self._w(f"#{event.index} cache miss: {reason}")
            elif isinstance(event, Note):
                prefix = "WARNING: " if event.level == "warning" else ""
                self._w(f"{prefix}{event.message}")

    def close(self) -> None:
        pass


class Json:
    """One JSON object per event (machine-readable progress)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        d = asdict(event)
        if isinstance(event, StepOutput):
            d["data"] = event.data.decode("utf-8", "replace")
        d["event"] = type(event).__name__
        d["time"] = round(time.time(), 3)
        with self._lock:
            self.stream.write(json.dumps(d, sort_keys=True) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


@dataclass
class _Row:
    start: StepStart
    t0: float
    status: str = "running"     # running | cached | done | error
    duration: float = 0.0
    tail: list[str] = field(default_factory=list)


class Tty:
    """Live view: a header with the elapsed time, one line per step with its timing, and the
    last lines of output of running steps; redrawn in place with ANSI escapes."""

    TAIL = 6

    def __init__(self, stream: TextIO, *, explain: bool = False, width: int = 100) -> None:
        self.stream = stream
        self.explain = explain
        self.width = width
        self._rows: dict[int, _Row] = {}
        self._notes: list[str] = []
        self._lock = threading.Lock()
        self._drawn = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress-tty", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                if any(r.status == "running" for r in self._rows.values()):
                    self._draw()

    def emit(self, event: Event) -> None:
        with self._lock:
            now = time.monotonic()
            if isinstance(event, StepStart):
                self._rows[event.index] = _Row(event, now)
            elif isinstance(event, StepCached) and event.index in self._rows:
                self._rows[event.index].status = "cached"
            elif isinstance(event, StepOutput) and event.index in self._rows:
                row = self._rows[event.index]
                lines = event.data.decode("utf-8", "replace").splitlines()
                row.tail = (row.tail + [ln for ln in lines if ln.strip()])[-self.TAIL:]
            elif isinstance(event, StepDone) and event.index in self._rows:
                row = self._rows[event.index]
                if row.status != "cached":
                    row.status, row.duration = "done", event.duration
                row.tail = []
            elif isinstance(event, StepFailed) and event.index in self._rows:
                row = self._rows[event.index]
                row.status, row.duration = "error", event.duration
            elif isinstance(event, Explain) and self.explain:
                self._notes += [f"#{event.index} cache miss: {r}" for r in event.reasons]
            elif isinstance(event, Note):
                prefix = "WARNING: " if event.level == "warning" else ""
                self._notes.append(prefix + event.message)
            self._draw()

    def _fit(self, text: str) -> str:
        return text if len(text) <= self.width else text[: self.width - 3] + "..."

    def _draw(self) -> None:
        now = time.monotonic()
        done = sum(1 for r in self._rows.values() if r.status in ("done", "cached"))
        total = max((r.start.total for r in self._rows.values()), default=0)
        lines = [f"[+] Building {now - self._t0:.1f}s ({done}/{total})"]
        lines += self._notes
        for index in sorted(self._rows):
            row = self._rows[index]
            label = _label(row.start)
            if row.status == "cached":
                lines.append(self._fit(f" => CACHED {label}"))
                continue
            took = row.duration if row.status != "running" else now - row.t0
            mark = " => ERROR " if row.status == "error" else " => "
            lines.append(self._fit(f"{mark}{label}") + f"  {took:.1f}s")
            if row.status == "running":
                lines += [self._fit(f" => => # {t}") for t in row.tail]
        out = ""
        if self._drawn:
            out += f"\x1b[{self._drawn}F"
        out += "".join(f"\x1b[2K{ln}\n" for ln in lines)
        if self._drawn > len(lines):
            out += "\x1b[J"
        self._drawn = len(lines)
        self.stream.write(out)
        self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)
        with self._lock:
            self._draw()
