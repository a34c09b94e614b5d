"""common.cli.main: user errors and Ctrl-C -> one 'error:' line and exit 2; bugs keep their traceback."""
import logging

import pytest

from common.cli import main
from common.config import ConfigError


def _fail(exc):
    def fn():
        raise exc
    return fn


@pytest.mark.parametrize("exc, text", [
    (ConfigError("config error in override 'trian.steps=3': Key 'trian' not in 'Config'\nsee tiny.yaml"),
     "error: config error in override 'trian.steps=3': Key 'trian' not in 'Config' see tiny.yaml"),
    (KeyboardInterrupt(), "error: interrupted"),
])
def test_user_errors_exit_2_with_one_line(exc, text, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
        main(_fail(exc))
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(text) and "\n" not in errors[0]


def test_bugs_propagate_and_success_returns():
    with pytest.raises(ZeroDivisionError):
        main(lambda: 1 / 0)
    assert main(lambda: 42) is None


def test_debug_adds_the_full_cause(caplog, monkeypatch):
    monkeypatch.setenv("MMKD_DEBUG", "1")

    def fn():
        raise ConfigError("train.lr=0: must be > 0") from ValueError("the cause")

    with caplog.at_level(logging.DEBUG), pytest.raises(SystemExit):
        main(fn)
    full = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(full) == 1 and full[0].exc_info[1].__cause__.args == ("the cause",)


def test_os_errors_of_the_machine_are_one_line_others_propagate(caplog):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/shre/metrics.jsonl")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
        main(_fail(full))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert stop.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: No space left on device (/runs/shre/metrics.jsonl); free space")
    with pytest.raises(FileNotFoundError):  # not the machine's fault: a bug shows its traceback
        main(_fail(FileNotFoundError(errno.ENOENT, "No such file or directory", "x")))


def test_a_worker_error_keeps_only_its_own_message():
    from common.cli import one_line
    from common.errors import DataError

    wrapped = DataError('Caught DataError in DataLoader worker process 3.\nOriginal Traceback (most '
                        'recent call last):\n  File "x.py", line 1, in f\n    raise DataError(m)\n'
                        'common.errors.DataError: bad image a.jpg:\n  re-download it\n')
    assert one_line(wrapped) == "bad image a.jpg: re-download it (in DataLoader worker process 3)"
