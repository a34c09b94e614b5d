"""`make smoke-full`: every chapter's full preset from real formats and published-layout
weights, through `make exp-<chapter> PRESET=full` (accelerate launch) and every eval CLI."""
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from common.paths import REPO_ROOT
from common.smoke_full import CHAPTERS


@pytest.mark.slow
def test_every_full_preset_runs_end_to_end_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "common.smoke_full", "--dir", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "smoke-full passed" in proc.stdout
    for name in CHAPTERS:
        rows = pd.concat([pd.read_csv(f) for f in (tmp_path / "results" / name).glob("*.csv")])
        assert set(rows["preset"]) == {"full"}, name
        assert (tmp_path / "runs" / name).is_dir()
    evals = pd.concat([pd.read_csv(f) for f in (tmp_path / "results" / "eval").glob("*.csv")])
    tools = {note.split(" ")[0] for note in evals["notes"]}
    assert tools == {"eval.retrieval", "eval.zero_shot_imagenet", "eval.knn_cifar", "eval.finetune"}
    assert set(evals["chapter"]) == set(CHAPTERS)
    assert set(evals["preset"]) == {"full"}
    assert not list((tmp_path / "runs").rglob("checkpoints"))  # deleted as the run went
    shutil.rmtree(tmp_path / "data")  # 1.5 GB of fixtures and weights: not kept by pytest
