"""GLUE: official metrics on hand-computed cases, the tsv loader on files in the original
format, the pair encoding, the export from (a fake) Hugging Face ``datasets``, and the
synthetic stand-in tasks."""
import math
import sys
import types

import pytest

from common.config import DataConfig
from common.data.glue import (GLUE_TASKS, GlueExample, dev_name, encode_examples, f1_score,
                              get_task, glue_metrics, load_split, load_task, matthews_corr,
                              pearson, prepare_glue, spearman, synthetic_task)
from common.data.sources import synthetic_world
from common.errors import DataError, UserError


# ---------------------------------------------------------------------------- metrics
def test_matthews_on_a_hand_computed_confusion_matrix():
    # tp=2, tn=1, fp=1, fn=1: (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6
    preds, labels = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    assert matthews_corr(preds, labels) == pytest.approx(1 / 6)
    assert matthews_corr([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert matthews_corr([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert matthews_corr([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction: 0, not NaN


def test_f1_of_the_positive_class():
    # tp=2, fp=1, fn=1: 2*2 / (2*2 + 1 + 1) = 2/3
    assert f1_score([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert f1_score([0, 0], [0, 0]) == 0.0


def test_pearson_and_spearman_with_ties():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]
    # by hand: means 2.5 and 5.25; sum of products of deviations 11.5; squares 5 and 26.75
    assert pearson(x, y) == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert spearman(x, y) == pytest.approx(1.0)  # monotone
    # ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))


def test_glue_metrics_are_the_official_ones_in_percent():
    mrpc = glue_metrics(GLUE_TASKS["mrpc"], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert mrpc == pytest.approx({"f1": 100 * 2 / 3, "acc": 60.0})
    assert list(glue_metrics(GLUE_TASKS["qqp"], [1, 0], [1, 1])) == ["acc", "f1"]
    assert glue_metrics(GLUE_TASKS["cola"], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(
        {"mcc": 100 / 6})
    stsb = glue_metrics(GLUE_TASKS["stsb"], [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert stsb["spearman"] == pytest.approx(100.0) and 99 < stsb["pearson"] < 100
    for name in ("sst2", "mnli", "qnli", "rte"):
        assert glue_metrics(GLUE_TASKS[name], [0, 1, 1, 0], [0, 1, 0, 0]) == {"acc": 75.0}


def test_task_names_and_dev_splits():
    assert sorted(GLUE_TASKS) == sorted(["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"])
    mnli = get_task("mnli")
    assert [dev_name(mnli, s) for s in mnli.dev_splits] == ["mnli-m", "mnli-mm"]
    assert dev_name(get_task("rte"), "dev") == "rte" and get_task("stsb").num_outputs == 1
    with pytest.raises(UserError, match="unknown text task 'sts'"):
        get_task("sts")


# ---------------------------------------------------------------------------- tsv files
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_loader_reads_the_original_glue_layouts(tmp_path):
    glue = tmp_path / "glue"
    # CoLA: no header; source, label, original label, sentence (quotes are literal)
    _write(glue / "CoLA" / "dev.tsv", 'gj04\t1\t\tThe sailors rode the "breeze".\n'
                                      "gj04\t0\t*\tThe more we study verbs.\n")
    _write(glue / "MRPC" / "dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                      "1\t10\t11\tHe said it.\tIt was said by him.\n"
                                      "0\t12\t13\tA cat.\tTwo dogs.\n")
    _write(glue / "STS-B" / "dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
                                       "sentence1\tsentence2\tscore\n"
                                       "0\tmain\tf\t2012\t1\tnone\tnone\tA man.\tA person.\t4.250\n")
    _write(glue / "MNLI" / "dev_mismatched.tsv",
           "index\tpromptID\tsentence1\tsentence2\tlabel1\tgold_label\n"
           "0\t7\tIt rains.\tIt is wet.\tneutral\tentailment\n"
           "1\t8\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\n"
           "2\tbroken line\n")  # too few columns: skipped, as in the official QQP train file
    _write(glue / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n"
                                       "0\tA b.\tC d.\tnot_entailment\n")

    cola = load_split(glue, GLUE_TASKS["cola"], "dev")
    assert cola == [GlueExample('The sailors rode the "breeze".', None, 1),
                    GlueExample("The more we study verbs.", None, 0)]
    assert load_split(glue, GLUE_TASKS["mrpc"], "dev") == [
        GlueExample("He said it.", "It was said by him.", 1), GlueExample("A cat.", "Two dogs.", 0)]
    assert load_split(glue, GLUE_TASKS["stsb"], "dev") == [GlueExample("A man.", "A person.", 4.25)]
    mnli = load_split(glue, GLUE_TASKS["mnli"], "dev_mismatched")  # gold_label, not label1
    assert [(e.text_b, e.label) for e in mnli] == [("It is wet.", 0), ("It is dry.", 2)]
    assert load_split(glue, GLUE_TASKS["rte"], "train")[0].label == 1


def test_loader_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"SST-2/dev.tsv does not exist.*common.data.prepare glue"):
        load_split(tmp_path, GLUE_TASKS["sst2"], "dev")
    _write(tmp_path / "QNLI" / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhy?\tBecause.\tmaybe\n")
    with pytest.raises(DataError, match=r"dev.tsv:2: label 'maybe' is not one of"):
        load_split(tmp_path, GLUE_TASKS["qnli"], "dev")
    _write(tmp_path / "SST-2" / "dev.tsv", "text\ttarget\nnice\t1\n")
    with pytest.raises(DataError, match="needs the columns"):
        load_split(tmp_path, GLUE_TASKS["sst2"], "dev")


def test_prepare_glue_writes_files_the_loader_reads(tmp_path, monkeypatch):
    hf = {("rte", "train"): [{"sentence1": "A\tb.", "sentence2": "C d.", "label": 1}],
          ("rte", "validation"): [{"sentence1": "E f.", "sentence2": "G h.", "label": 0}],
          ("cola", "train"): [{"sentence": "Good.", "label": 1}],
          ("cola", "validation"): [{"sentence": 'Bad "one".', "label": 0}],
          ("stsb", "train"): [{"sentence1": "x", "sentence2": "y", "label": 3.5}],
          ("stsb", "validation"): [{"sentence1": "z", "sentence2": "w", "label": 0.25}]}
    fake = types.SimpleNamespace(load_dataset=lambda name, config, split: hf[(config, split)])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    root = prepare_glue(tmp_path, ["rte", "cola", "stsb"])
    assert root == tmp_path / "glue"
    assert load_split(root, GLUE_TASKS["rte"], "train") == [GlueExample("A b.", "C d.", 1)]
    assert load_split(root, GLUE_TASKS["cola"], "dev") == [GlueExample('Bad "one".', None, 0)]
    assert not (root / "CoLA" / "dev.tsv").read_text().startswith("sentence")  # header-less, as GLUE
    assert load_split(root, GLUE_TASKS["stsb"], "dev")[0].label == 0.25


# ---------------------------------------------------------------------------- model input
class CharTokenizer:
    """One token per character (ord), fairseq's special ids: lengths are easy to count."""
    bos_id, pad_id, eos_id = 0, 1, 2

    def encode(self, text):
        return [ord(c) for c in text]


def test_pairs_are_joined_by_eos_and_truncated_longest_first():
    tok = CharTokenizer()
    ids, mask = encode_examples(tok, [GlueExample("abc", "defgh", 1), GlueExample("xy", None, 0)], 64)
    assert ids[0].tolist() == [0, *b"abc", 2, 2, *b"defgh", 2]  # BOS a EOS EOS b EOS
    assert ids[1].tolist() == [0, *b"xy", 2] + [1] * 8  # padded with pad_id
    assert mask[1].tolist() == [False] * 4 + [True] * 8 and not mask[0].any()
    # max_len 9 leaves 5 text tokens: b 5->4->3, then a (now as long) 3->2
    short, _ = encode_examples(tok, [GlueExample("abc", "defgh", 1)], max_len=9)
    assert short[0].tolist() == [0, *b"ab", 2, 2, *b"def", 2]
    single, _ = encode_examples(tok, [GlueExample("abcdefgh", None, 1)], max_len=5)
    assert single[0].tolist() == [0, *b"abc", 2]


# ---------------------------------------------------------------------------- stand-ins
def test_synthetic_stand_ins_are_deterministic_and_balanced():
    world = synthetic_world(DataConfig(train_size=1000))
    train, dev = synthetic_task("syn-pair", world, num_train=400, num_dev=100)
    again, _ = synthetic_task("syn-pair", world, num_train=400, num_dev=100)
    assert train == again and len(train) == 400 and len(dev) == 100
    assert 0.35 < sum(e.label for e in train) / len(train) < 0.65
    assert all(e.text_a != e.text_b for e in train)
    shape_train, _ = synthetic_task("syn-shape", world, num_train=200, num_dev=10)
    assert sorted({e.label for e in shape_train}) == list(range(10))
    task, train, dev = load_task("syn-shape", DataConfig(train_size=1000))
    assert task.labels[0] == "circle" and list(dev) == ["dev"] and train[0].text_b is None


def test_prepare_glue_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)\nmore")

    fake = types.ModuleType("datasets")
    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DataError, match=r"could not get GLUE cola/train .*ConnectionError: "
                                        r"Couldn't reach .*copy the original GLUE tsv files into") as err:
        prepare_glue(tmp_path, ["cola"])
    assert "\n" not in str(err.value)
