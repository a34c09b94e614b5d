"""Every number in a README table comes from a committed CSV: result blocks are what
eval.compare prints for the committed CSVs (eval.readme_tables), and any other decimal in
a table row is a value of a committed CSV (the published numbers, the reference runs)."""
import re

import pandas as pd

from common.paths import REPO_ROOT
from eval import readme_tables

NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def committed_values() -> set:
    values = set()
    for path in (REPO_ROOT / "results" / "reference").rglob("*.csv"):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for cell in df.to_numpy().ravel():
            try:
                values.add(round(float(cell), 2))
            except ValueError:
                pass
    return values


def stray_numbers(text: str, known: set) -> list:
    """Decimals in table rows outside result blocks that no committed CSV holds."""
    text = readme_tables.FINDINGS.sub("", readme_tables.BLOCK.sub("", text))
    return [n for line in text.splitlines() if line.startswith("|")
            for n in NUMBER.findall(line) if round(float(n), 2) not in known]


def test_result_blocks_are_up_to_date():
    stale = [s for path in readme_tables.readmes() for s in readme_tables.refresh(path)[1]]
    assert not stale, f"stale README result blocks (run python -m eval.readme_tables): {stale}"


def test_every_table_number_is_in_a_committed_csv():
    known = committed_values()
    stray = {str(p.relative_to(REPO_ROOT)): stray_numbers(p.read_text(), known)
             for p in readme_tables.readmes()}
    assert not {k: v for k, v in stray.items() if v}, stray


def test_the_check_catches_a_hand_typed_number():
    known = committed_values()
    assert 41.36 in known  # the thesis's SHRe COCO image->text R@1
    assert stray_numbers("| thesis | 41.36 / 71.16 |\n| tiny | 12.34567 |\nprose 98.76\n", known) == ["12.34567"]
