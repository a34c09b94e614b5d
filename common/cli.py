"""Entry-point wrapper for chapter scripts and eval CLIs: ``if __name__ == "__main__": main(run)``.

Mistakes a user can make end in one readable line and exit status 2 instead of a
traceback, and so do OS errors of the machine rather than the code (a full disk or quota,
a missing permission, a read-only file system: :data:`ENVIRONMENT_ERRNOS`), wherever they
happen; bugs (any other exception) still show their full traceback. ``MMKD_DEBUG=1``
logs at DEBUG level and adds the full traceback (with its causes) of a user error after
its line.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
from typing import Any, Callable

from common.errors import UserError

log = logging.getLogger("mmkd")

ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def setup_logging(level: int | None = None) -> None:
    """Concise console logging (time, logger, message) for every ``mmkd`` entry point; INFO,
    or DEBUG under ``MMKD_DEBUG=1``."""
    if level is None:
        level = logging.DEBUG if os.environ.get("MMKD_DEBUG") == "1" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def main(fn: Callable[[], Any]) -> None:
    """Set up logging and run ``fn()``; a :class:`UserError`, an OS error of the machine or
    Ctrl-C -> ``error: ...``, exit 2."""
    setup_logging()
    try:
        fn()
    except UserError as err:
        log.error("error: %s", one_line(err))
        log.debug("the error in full:", exc_info=err)
        sys.exit(2)
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        log.error("error: %s%s; free space on (or fix the permissions of) the folders the run "
                  "writes to, or point MMKD_RUNS / MMKD_RESULTS / MMKD_CACHE elsewhere, then run "
                  "the same command again: finished checkpoints are kept", err.strerror, where)
        log.debug("the error in full:", exc_info=err)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("error: interrupted; checkpoints written so far are kept "
                  "(continue with train.resume=auto)")
        sys.exit(2)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error re-raised by a DataLoader worker carries
    the worker's whole traceback in its message ("Caught DataError in DataLoader worker
    process 0. Original Traceback ... common.errors.DataError: <message>"); only the
    original message is kept from it."""
    text = str(err)
    worker = re.match(r"Caught (\w+) in (DataLoader worker process \d+)\.\n", text)
    if worker:
        lines = text.splitlines()
        own = re.compile(rf"(?:[\w.]+\.)?{worker.group(1)}: ")  # the raised exception's own line
        starts = [i for i, line in enumerate(lines) if own.match(line)]
        if starts:
            message = own.sub("", "\n".join(lines[starts[-1]:]), count=1)
            text = f"{message} (in {worker.group(2)})"
    return " ".join(text.split()) or type(err).__name__
