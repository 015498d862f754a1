"""Child processes of the tools (collect, demo, bringup) that die with their parent.

A child started with ``preexec_fn=die_with_parent()`` gets SIGTERM from the kernel
when the process that started it dies, however it dies (kill -9, an out-of-memory
kill): Linux's PR_SET_PDEATHSIG, set between fork and exec. The nodes close on
SIGTERM as on Ctrl-C (a recording is closed cleanly), so nothing runs on, and no
episode grows, after its tool has gone.

The signal comes when the *thread* that started the child ends: start children from
the main thread, or from a thread that lives as long as they should.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """Return a ``preexec_fn`` that makes the child receive ``sig`` when this process dies."""
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        if _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


class Processes:
    """``gen-theta`` verbs run as child processes, each logging to ``log_dir/<name>.log``.

    The children die with this process (``die_with_parent``); ``stop`` ends them with
    SIGINT, then SIGKILL after 10 s.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list[IO[str]] = []

    def start(self, name: str, args: list[str]) -> None:
        """Start ``gen-theta <args>`` as child ``name``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "w")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "gen_theta_ros.cli", *args]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())

    def check_alive(self) -> None:
        """Raise RuntimeError naming the first child that has exited, and its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                last = (log.read_text().strip().splitlines() or [""])[-1]
                raise RuntimeError(f"'{name}' exited with status {proc.returncode} ({last.strip()}); its log: {log}")

    def stop(self) -> None:
        """End every child: SIGINT, then SIGKILL for any still running after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()
