"""Progress events of a pull or push. Library code reports through a callback; the CLI renders
(bars on a TTY, one line per blob otherwise). Callbacks may be called from worker threads.
Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["resolve", "start", "progress", "done", "skip", "retry", "warning", "manifest"]


@dataclass(frozen=True, slots=True)
class Event:
    """One progress report of a pull or push."""

    kind: EventKind
    digest: str = ""  # the blob or manifest digest ("" for whole-operation events)
    total: int = 0  # bytes expected
    done: int = 0  # bytes so far
    note: str = ""  # "exists", "mounted from x", "resumed at N", a warning text...


Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    del event
