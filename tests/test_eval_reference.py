"""The published numbers in results/reference/ are exactly THESIS.md's, in the results schema."""
import re

import pandas as pd
import pytest

from common.paths import REPO_ROOT
from common.results import COLUMNS, load_results
from eval.compare import REFERENCE_DIR, with_mean_recall

THESIS = REPO_ROOT.parent / "shared" / "THESIS.md"
RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
# THESIS.md's row label -> (model, teacher) of the reference row
LABELS = {
    "Data2Vec2 (unimodal pair)": ("Data2Vec2 (unimodal pair)", None),
    "MM-D2V2 (D2V2 teacher)": ("MM-D2V2", "data2vec 2.0 image"),
    "MM-D2V2 (BEiT v2)": ("MM-D2V2", "BEiT v2"),
    "MM-D2V2 7_2": ("MM-D2V2 7_2", "BEiT v2"),
    "MM-D2V2 7": ("MM-D2V2 7", "BEiT v2"),
    "FLAVA": ("FLAVA", None), "CLIP": ("CLIP", None),
    "BEiT-3 (fine-tuned)": ("BEiT-3 (fine-tuned)", None), "VLMo (fine-tuned)": ("VLMo (fine-tuned)", None),
    "ITC": ("Sx3HRe (ITC)", None), "-ITC": ("Sx3HRe (-ITC)", None), "cos": ("Sx3HRe (cos)", None),
}
NUMBER = r"(\d+(?:\.\d+)?|-)"
TRIPLE = f"{NUMBER}/{NUMBER}/{NUMBER}"
ROW = re.compile(rf"^(.*?)\s*{TRIPLE} \| {TRIPLE} \| {TRIPLE} \| {TRIPLE}\.?$")


@pytest.fixture(scope="module")
def reference():
    return load_results(str(REFERENCE_DIR / "*.csv"))


@pytest.fixture(scope="module")
def thesis_text():
    if not THESIS.is_file():
        pytest.skip(f"{THESIS} is not next to the repository")
    return THESIS.read_text()


def value(text):
    return float("nan") if text == "-" else float(text)


def thesis_rows(text):
    """{label: 12 numbers} of every 'label a/b/c | d/e/f | g/h/i | j/k/l' entry of THESIS.md."""
    rows = {}
    for line in text.splitlines():
        for segment in line.split(";"):
            match = ROW.match(segment.strip())
            if match:
                label = match.group(1).split(":")[-1].strip()
                rows[label] = [value(v) for v in match.groups()[1:]]
    return rows


def one(df, **where):
    sel = df
    for column, wanted in where.items():
        sel = sel[sel[column].isna()] if wanted is None else sel[sel[column] == wanted]
    assert len(sel) == 1, (where, sel)
    return sel.iloc[0]


def test_reference_files_use_the_results_schema(reference):
    for path in REFERENCE_DIR.glob("*.csv"):
        assert list(pd.read_csv(path).columns) == list(COLUMNS), path
    assert reference["reference"].all() and len(reference) >= 30


def test_every_retrieval_table_row_of_the_thesis_is_a_reference_row(reference, thesis_text):
    rows = thesis_rows(thesis_text)
    assert set(rows) == set(LABELS), "THESIS.md has other table rows now: map them in LABELS"
    for label, numbers in rows.items():
        model, teacher = LABELS[label]
        for dataset, part in (("coco5k", numbers[:6]), ("flickr1k", numbers[6:])):
            row = one(reference, model=model, teacher=teacher, dataset=dataset)
            assert row[RECALLS].tolist() == pytest.approx(part, nan_ok=True), (label, dataset)


def test_shre_zero_shot_and_beit3_flickr_rows(reference, thesis_text):
    assert "COCO i2t 41.36/71.16/82.0, t2i 30.2/59.46/72.54" in thesis_text
    shre = one(reference, model="SHRe reproduction", dataset="coco5k")
    assert shre[RECALLS].tolist() == [41.36, 71.16, 82.0, 30.2, 59.46, 72.54]
    assert one(reference, model="SHRe reproduction", dataset="flickr1k")[RECALLS].tolist() == [
        9.5, 35.68, 50.18, 8.38, 37.54, 49.88]
    match = re.search(r"top-1 21\.8 \(Visual N-Grams 11\.5, CLIP 72\.6, random 0\.1\)", thesis_text)
    assert match
    zs = {m: one(reference, model=m, dataset="imagenet")["zs_top1"]
          for m in ("SHRe reproduction", "Visual N-Grams", "CLIP", "random")}
    assert zs == {"SHRe reproduction": 21.8, "Visual N-Grams": 11.5, "CLIP": 72.6, "random": 0.1}
    assert "94.9/99.9/100.0 | 81.5/95.6/97.8" in thesis_text
    beit3 = one(reference, model="BEiT-3 (zero-shot)", dataset="flickr1k")
    assert beit3[RECALLS].tolist() == [94.9, 99.9, 100.0, 81.5, 95.6, 97.8]


def test_mean_recall_from_the_rows_reproduces_table_8(reference, thesis_text):
    """Table 8's average recalls are not stored: they follow from the R@k rows."""
    table8 = {"MM-D2V2 7": "MM-D2V2 7", "BEiT-3": "BEiT-3 (fine-tuned)", "VLMo": "VLMo (fine-tuned)"}
    filled = with_mean_recall(reference)
    for label, model in table8.items():
        pattern = rf"{re.escape(label)}:? {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}"
        match = re.search(pattern, thesis_text)
        assert match, label
        got = []
        for dataset in ("coco5k", "flickr1k"):
            row = one(filled, model=model, dataset=dataset)
            got += [row["i2t_mean_recall"], row["t2i_mean_recall"]]
        assert [round(v, 2) for v in got] == [float(v) for v in match.groups()], label
