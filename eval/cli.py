"""What every checkpoint-evaluating CLI shares: its arguments, loading the run, writing rows.

Each tool is ``python -m eval.<tool> RUN [key=value ...] [options]``; ``RUN`` is a run
folder, a checkpoint folder or a ``model.safetensors`` (see :mod:`eval.checkpoint_model`),
``key=value`` overrides choose the evaluation data (``data.source=real data.root=...``).
Rows go to ``results/eval/<run>.csv`` in the schema of :mod:`common.results` and are
printed as a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from common.cli import main as cli_main
from common.errors import DataError
from common.experiment import markdown_table, write_rows
from eval.checkpoint_model import LoadedRun, load_run

EXAMPLE_RUN = "runs/shre/shre"


def parser(tool: str, description: str, example: str = "") -> argparse.ArgumentParser:
    """An argument parser with the shared ``RUN``, ``key=value`` and ``--device`` arguments."""
    epilog = (f"example:\n  python -m eval.{tool} {EXAMPLE_RUN} {example}".rstrip() +
              f"\n  python -m eval.{tool} {EXAMPLE_RUN} data.source=real data.root=/datasets")
    p = argparse.ArgumentParser(prog=f"python -m eval.{tool}", description=description,
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path,
                   help="run folder (runs/<chapter>/<run>, newest checkpoint), a "
                        "checkpoints/step_* folder or a model.safetensors inside a run folder")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the run's config for evaluation, e.g. data.source=real "
                        "data.root=/datasets data.coco_test_size=1000 eval.batch_size=128")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def load(args: argparse.Namespace, needs: Sequence[str] = ("encode_image",)) -> LoadedRun:
    """The run of ``args``; its model must have the methods in ``needs``."""
    run = load_run(args.run, args.overrides, args.device)
    missing = [name for name in needs if not callable(getattr(run.model, name, None))]
    if missing:
        raise DataError(f"the model of chapter '{run.cfg.chapter}' has no {', '.join(missing)} "
                        f"(an image-only student?); evaluate it with eval.knn_cifar or eval.finetune")
    return run


def finish(run: LoadedRun, rows: List[Dict[str, Any]], columns: Sequence[str]) -> List[Dict[str, Any]]:
    """Append ``rows`` to ``results/eval/<run>.csv`` and print them; return them."""
    write_rows("eval", run.cfg.run, rows)
    print(markdown_table(rows, ["run", "model", "dataset", *columns]))
    return rows


def entry(main: Callable[[Optional[Sequence[str]]], Any]) -> None:
    """``python -m`` entry: user errors become one line and exit status 2 (common.cli)."""
    cli_main(lambda: main(sys.argv[1:]))
