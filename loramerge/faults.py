"""Named points where the crash tests stop a real loramerge process, the way a kill or Ctrl-C would.

`LORAMERGE_FAULT=replace:between-renames:KILL` makes the process SIGKILL itself when it reaches that point;
`checkpoint:staged#2:KILL` the second time it reaches it; `:INT` sends SIGINT, as Ctrl-C does; `:STOP` freezes the process there (for a second run to meet it). Unset, as it
is outside tests/test_crashes.py, a point costs one environment lookup. A signal the process sends itself is a
real signal (the handlers and the kernel treat it like one from outside), but it lands at a known place
instead of at a random time, so each test hits the window it means to.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "STOP": signal.SIGSTOP}  # STOP: hold a run where it is
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    fault = os.environ.get("LORAMERGE_FAULT")
    if not fault:
        return
    point, _, kind = fault.rpartition(":")
    point, _, nth = point.partition("#")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), SIGNALS[kind])
