"""argparse pieces shared by the command-line tools."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


class ExtendAction(argparse.Action):
    """``nargs="+"`` that may also be repeated: ``--seeds 1 2 --seeds 5`` gives ``[1, 2, 5]``.

    argparse's own ``nargs="+"`` keeps only the last use (``--data A --data B`` would drop A
    without a word), and its ``action="extend"`` adds the values to the default list. Here the
    default holds only while the option is never given.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, items + list(values or []))
