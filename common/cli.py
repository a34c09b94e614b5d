"""Entry-point wrapper for chapter scripts and eval CLIs: ``if __name__ == "__main__": main(run)``.

Mistakes a user can make end in one readable line and exit status 2 instead of a
traceback; bugs (any other exception) still show their full traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from common.errors import UserError

log = logging.getLogger("mmkd")


def setup_logging(level: int = logging.INFO) -> None:
    """Concise console logging (time, logger, message) for every ``mmkd`` entry point."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def main(fn: Callable[[], Any]) -> None:
    """Set up logging and run ``fn()``; a :class:`UserError` or Ctrl-C -> ``error: ...``, exit 2."""
    setup_logging()
    try:
        fn()
    except UserError as err:
        log.error("error: %s", " ".join(str(err).split()) or type(err).__name__)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("error: interrupted; checkpoints written so far are kept "
                  "(continue with train.resume=auto)")
        sys.exit(2)
