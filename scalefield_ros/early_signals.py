"""Ctrl-C / SIGTERM while a node process is still importing torch and rclpy (the first
second or two): exit at once, quietly, with status 128 + signal.

Python's default turns SIGINT into a KeyboardInterrupt wherever the import happens to be,
which prints a traceback, can be swallowed by a C extension's import (the signal is lost),
or unwinds through pybind11 and aborts. ``align_node.run`` replaces these handlers with its
own as soon as rclpy is initialised. Installed only by the executables, never on import.
"""

from __future__ import annotations

import os
import signal
import sys


def _exit_while_starting(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    try:
        sys.stderr.write(f"scalefield_align: stopped by signal {signum} while starting\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)  # no unwinding through half-imported C extensions


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_while_starting)
