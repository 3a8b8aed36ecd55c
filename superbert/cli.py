"""The scripts' entry guard: user errors become one stderr line and exit status 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import UserError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's main(); a UserError exits 2 with `error: <message>` and no traceback."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
