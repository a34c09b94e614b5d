"""README result tables, generated from the committed result CSVs.

A chapter README holds its numbers in blocks such as

    <!-- results: --where chapter=itc_ablation --by model --metrics i2t_r1 t2i_r1 -->
    | model | dataset | ref | n | i2t_r1 | t2i_r1 |
    ...
    <!-- /results -->

whose first line is a set of :mod:`eval.compare` arguments; the table under it is what
``python -m eval.compare <arguments>`` prints for the committed CSVs: this repo's tiny
reference runs (``results/reference/tiny/``, ``make reference``) and the published numbers
(``results/reference/*.csv``). A ``<!-- findings -->`` ... ``<!-- /findings -->`` block holds
the verdict table of :mod:`eval.findings` on the same CSVs. This rewrites every block;
``--check`` only reports blocks that differ (the test suite runs it), so a table can neither
be edited by hand nor go stale.

    python -m eval.readme_tables            # rewrite the blocks
    python -m eval.readme_tables --check    # exit 1 naming stale blocks
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from common.errors import UserError
from common.paths import REPO_ROOT
from eval import compare, findings

REFERENCE_CSVS = [str(REPO_ROOT / "results" / "reference" / "tiny" / "*" / "*.csv"),
                  str(REPO_ROOT / "results" / "reference" / "*.csv")]
BLOCK = re.compile(r"(<!-- results: (?P<args>.*?) -->\n)(?P<table>.*?)(<!-- /results -->)", re.S)
FINDINGS = re.compile(r"(<!-- findings -->\n)(?P<table>.*?)(<!-- /findings -->)", re.S)


def readmes(root: Path = REPO_ROOT) -> List[Path]:
    """The README files that may hold result tables: the top one and every chapter's."""
    return [root / "README.md", *sorted((root / "experiments").glob("*/README.md"))]


def render_block(args: str, csvs: Sequence[str] = REFERENCE_CSVS) -> str:
    """The table of one block's ``eval.compare`` arguments (with a trailing newline)."""
    try:
        return compare.build([*csvs, *shlex.split(args)]).rstrip("\n") + "\n"
    except SystemExit:  # argparse already printed what is wrong with the arguments
        raise UserError(f"README result block has bad eval.compare arguments: {args}") from None
    except UserError as e:
        raise UserError(f"README result block '{args}': {e}") from None


def refresh(path: Path, csvs: Sequence[str] = REFERENCE_CSVS) -> tuple[str, List[str]]:
    """``path``'s text with every block regenerated, and the arguments of blocks that changed."""
    text = path.read_text()
    stale: List[str] = []

    def sub(match: re.Match) -> str:
        table = render_block(match.group("args"), csvs)
        if table != match.group("table"):
            stale.append(match.group("args"))
        return match.group(1) + table + match.group(4)

    text = BLOCK.sub(sub, text)
    if FINDINGS.search(text):
        table = findings.summary(findings.reference_findings()) + "\n"

        def sub_findings(match: re.Match) -> str:
            if table != match.group("table"):
                stale.append("findings")
            return match.group(1) + table + match.group(3)

        text = FINDINGS.sub(sub_findings, text)
    return text, stale


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    p = argparse.ArgumentParser(prog="python -m eval.readme_tables", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="report stale blocks, change nothing (exit 1)")
    args = p.parse_args(argv)
    stale_all = []
    for path in readmes():
        text, stale = refresh(path)
        stale_all += [f"{path.relative_to(REPO_ROOT)}: {s}" for s in stale]
        if stale and not args.check:
            path.write_text(text)
    for line in stale_all:
        print(("stale: " if args.check else "rewrote: ") + line)
    if args.check and stale_all:
        sys.exit(1)
    return stale_all


if __name__ == "__main__":
    from common.cli import main as cli_main
    cli_main(lambda: main(sys.argv[1:]))
