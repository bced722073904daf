"""User-facing errors: one line that names the file and the problem, never a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence


class SelfsupError(Exception):
    """A problem with the user's input or environment, reported as one line."""


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a recipe's ``main``; a :class:`SelfsupError` ends the process with ``error: ...`` and exit code 1.

    Set ``SELFSUP_TRACEBACK=1`` to see the traceback as well.
    """
    try:
        main(argv)
    except SelfsupError as err:
        if os.environ.get("SELFSUP_TRACEBACK"):
            raise
        msg = " ".join(str(err).split())
        print(f"error: {msg}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: resume with --resume_from_checkpoint latest", file=sys.stderr, flush=True)
        sys.exit(130)
