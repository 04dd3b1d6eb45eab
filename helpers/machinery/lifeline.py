"""A torchrun worker dies with its launcher: it watches the ``torchrun`` process that started it.

Killed with SIGKILL, ``torchrun`` cannot stop its workers; they would be
adopted by init, train on and write the cache entry beside the user's rerun.
:func:`watch_launcher`, called first thing in a worker, makes the worker
exit within about a second of its parent's death, with one line on stderr:

* on Linux, the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG,
  SIGTERM)``) wakes a SIGTERM handler that exits when the parent is gone (a
  SIGTERM from a living torchrun, which stops its workers that way, keeps its
  usual effect, about a second late: the kernel signals when the launcher's
  thread that started the worker exits, and ``os.getppid()`` changes only
  when the launcher's last thread has);
* elsewhere, or where ``prctl`` cannot be called, a daemon thread compares
  ``os.getppid()`` with the launcher's pid every half second.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
"""``prctl`` option of ``<linux/prctl.h>``: the signal the kernel sends a process when its parent dies."""
POLL_S = 0.5
"""How often the fallback thread looks at the parent, in seconds."""
GRACE_S = 1.0
"""How long a SIGTERM waits for the launcher's death to show in ``os.getppid()``; a plain SIGTERM is this late."""
EXIT_STATUS = 128 + signal.SIGTERM
"""A worker that stops for its launcher exits as if terminated by SIGTERM."""


def is_torchrun_worker() -> bool:
    """Whether this process was started by torchrun (which sets ``TORCHELASTIC_RUN_ID`` and ``LOCAL_RANK``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _stop(launcher: int) -> None:
    """Say in one line that the launcher is gone, and end this process at once (no cleanup can hang)."""
    rank = os.environ.get("RANK", "?")
    print(f"torchrun worker {os.getpid()} (rank {rank}): its launcher (pid {launcher}) is gone; stopping",
          file=sys.stderr, flush=True)
    os._exit(EXIT_STATUS)


def _parent_death_signal(sig: int) -> bool:
    """Ask the Linux kernel for ``sig`` when the parent dies; return whether it was granted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _gone(launcher: int, wait_s: float) -> bool:
    """Whether the parent is no longer ``launcher``, waiting up to ``wait_s`` for it to change.

    The kernel sends the parent-death signal when the *thread* that started
    this process exits; the launcher's other threads may still be exiting,
    and until the last one has, ``os.getppid()`` still names the launcher.
    """
    deadline = time.monotonic() + wait_s
    while os.getppid() == launcher:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _on_sigterm(launcher: int):
    """A SIGTERM handler: stop if the launcher is gone, else do what SIGTERM did before."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if _gone(launcher, wait_s=GRACE_S):
            _stop(launcher)
        if callable(previous):
            return previous(signum, frame)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the default action (or none, if it was ignored)
    return handler


def _poll(launcher: int) -> None:
    """Daemon thread body: stop once ``os.getppid()`` is no longer the launcher."""
    while os.getppid() == launcher:
        time.sleep(POLL_S)
    _stop(launcher)


def watch_launcher() -> str:
    """Make this process exit (one line on stderr) when its parent, the torchrun launcher, dies.

    Returns how: ``"prctl"`` (Linux's parent-death signal) or ``"polling"``
    (a daemon thread). Call it from the main thread, early: the parent's pid
    is recorded first, and checked again after ``prctl``, so a launcher that
    died in between is noticed too.
    """
    launcher = os.getppid()
    how = "polling"
    if threading.current_thread() is threading.main_thread():  # only it may set signal handlers
        previous = signal.signal(signal.SIGTERM, _on_sigterm(launcher))  # ready before the signal can come
        if _parent_death_signal(signal.SIGTERM):
            how = "prctl"
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if how == "polling":
        threading.Thread(target=_poll, args=(launcher,), name="torchrun-lifeline", daemon=True).start()
    if os.getppid() != launcher:  # died before the signal was asked for
        _stop(launcher)
    return how
