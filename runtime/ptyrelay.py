"""The terminal relay of a foreground container (runtime.sandbox.run) and of `exec -t`
(runtime.exec): this process's stdin -> the pty master, the master -> its stdout, until the
container side closes the pty. Stdlib only; imported only when a pty is relayed, so it costs
`pybuild run` nothing without a terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty


def relay(master: int, *, interactive: bool, in_fd: int = 0, out_fd: int = 1) -> None:
    """Copy ``master`` -> ``out_fd`` (and with ``interactive`` ``in_fd`` -> ``master``) until
    the master reads EOF or fails (EIO once the last slave fd is closed). A terminal on
    ``in_fd`` is in raw mode meanwhile (^C etc. travel as bytes) and restored afterwards; EOF
    on ``in_fd`` is passed on as ^D and ``in_fd`` is no longer read."""
    saved = None
    if interactive and os.isatty(in_fd):
        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd)
    watch = [master] + ([in_fd] if interactive else [])
    try:
        while True:
            try:
                ready, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                write_all(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                if not data:
                    watch.remove(in_fd)
                    with contextlib.suppress(OSError):
                        write_all(master, b"\x04")   # EOF for the line discipline
                    continue
                write_all(master, data)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a pty or pipe may take part of a large write)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
