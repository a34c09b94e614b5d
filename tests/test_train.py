"""fit(): exact resume after a kill, the NaN guard, metrics.jsonl, refusing to clobber a run."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from common.checkpoint import list_checkpoints
from common.config import TrainConfig
from common.errors import TrainingDiverged, UserError
from common.train import fit, load_weights


class ToyStream(Dataset):
    """Item k of an endless regression stream; depends only on (seed, k)."""

    def __init__(self, seed: int = 0, dim: int = 8):
        self.seed, self.dim = seed, dim
        self.w = torch.linspace(-1, 1, dim)

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, k: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        x = torch.randn(self.dim, generator=g)
        return x, x @ self.w


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))


def step_fn(model, batch):
    x, y = batch
    mse = (model(x).squeeze(-1) - y).pow(2).mean()
    return {"loss": mse + 0.0, "mse": mse}


def evaluate(model, step):
    torch.rand(5)  # randomness in evaluation must not leak into training
    return {"w_norm": sum(p.norm() for p in model.parameters()).item(), "eval_step": step}


def cfg(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, log_every=1, ckpt_every=10,
                eval_every=5, seed=1)
    return TrainConfig(**{**base, **kw})


class Killed(Exception):
    pass


def kill_at(step_to_die: int):
    def hook(model, step):
        if step == step_to_die:
            raise Killed
    return hook


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_kill_is_bit_exact(tmp_path):
    a = make_model()
    res_a = fit(a, step_fn, ToyStream(), cfg(), tmp_path / "a", evaluate=evaluate)

    b = make_model()
    with pytest.raises(Killed):
        fit(b, step_fn, ToyStream(), cfg(), tmp_path / "b", evaluate=evaluate,
            on_step_end=kill_at(12))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000010"]
    b = make_model(seed=123)  # a fresh process would rebuild the model with any init
    res_b = fit(b, step_fn, ToyStream(), cfg(resume="auto"), tmp_path / "b", evaluate=evaluate)

    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert res_b.step == res_a.step == 20
    assert res_b.history == res_a.history and [h["step"] for h in res_a.history] == [5, 10, 15, 20]
    assert res_b.checkpoint.name == "step_0000020"
    def logged(run):
        return [(r["step"], r["loss"], r["mse"], r["lr"], r.get("w_norm")) for r in read_metrics(run)]
    assert logged(tmp_path / "b") == logged(tmp_path / "a")  # steps 11, 12 logged once, not twice
    assert [r["step"] for r in read_metrics(tmp_path / "a")] == list(range(1, 21))
    assert {"samples_per_sec", "lr"} <= set(read_metrics(tmp_path / "a")[0])
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step_0000010", "step_0000020"]
    state = json.loads((res_a.checkpoint / "state.json").read_text())
    assert state["step"] == 20 and state["config"]["batch_size"] == 8 and "rng" in state

    # evaluating (which draws random numbers here) leaves training untouched
    c = make_model()
    fit(c, step_fn, ToyStream(), cfg(eval_every=0, ckpt_every=0), tmp_path / "c")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))

    # resuming a finished run trains nothing and returns the stored history
    again = fit(make_model(), step_fn, ToyStream(), cfg(resume="auto"), tmp_path / "a",
                evaluate=evaluate)
    assert again.step == 20 and again.history == res_a.history
    # starting fresh on top of a run's checkpoints is refused, nothing is touched
    with pytest.raises(UserError, match="resume=auto"):
        fit(make_model(), step_fn, ToyStream(), cfg(), tmp_path / "a")
    assert len(read_metrics(tmp_path / "a")) == 20


def test_nan_guard_stops_before_stepping_and_keeps_last_checkpoint(tmp_path):
    calls = []

    def nan_at_5(model, batch):
        calls.append(1)
        out = step_fn(model, batch)
        if len(calls) == 5:
            out["mse"] = out["mse"] * float("nan")
            out["loss"] = out["mse"]
        return out

    model = make_model()
    with pytest.raises(TrainingDiverged) as err:
        fit(model, nan_at_5, ToyStream(), cfg(ckpt_every=2, eval_every=0), tmp_path)
    msg = str(err.value)
    ckpt = tmp_path / "checkpoints" / "step_0000004"
    assert "\n" not in msg and "step 5" in msg and "'mse'" in msg and str(ckpt) in msg
    assert "train.lr" in msg and "grad_clip" in msg
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000004"]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    # the model was not stepped with the NaN loss: it still equals checkpoint 4
    restored = make_model(seed=7)
    load_weights(restored, ckpt)
    for pa, pb in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(pa, pb)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_frozen_teacher_and_step_fn_contract(tmp_path):
    teacher = nn.Linear(8, 1)
    model = make_model()

    def distill(model, batch):
        x, _ = batch
        assert not teacher.training
        return {"loss": (model(x) - teacher(x)).pow(2).mean()}

    before = teacher.weight.clone()
    res = fit(model, distill, ToyStream(), cfg(steps=4, ckpt_every=0), tmp_path, frozen=[teacher])
    assert torch.equal(teacher.weight, before) and not teacher.weight.requires_grad
    assert res.history == [] and res.trainable_params == sum(p.numel() for p in model.parameters())
    assert res.samples_per_sec > 0 and res.checkpoint.name == "step_0000004"
    with pytest.raises(KeyError, match="'loss'"):
        fit(make_model(), lambda m, b: {"mse": m(b[0]).mean()}, ToyStream(), cfg(steps=2),
            tmp_path / "bad")


def test_train_minutes_leave_out_evaluation(tmp_path):
    import time

    def slow_eval(model, step):
        time.sleep(1.0)
        return {"step_seen": step}

    result = fit(make_model(), step_fn, ToyStream(), cfg(steps=4, eval_every=2, ckpt_every=0),
                 tmp_path / "run", evaluate=slow_eval)
    assert len(result.history) == 2  # two evaluations, 2 s of sleeping
    assert result.train_minutes * 60 < 1.0


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    run = tmp_path / "run"
    fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0), run)
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 11, "loss": 0.')  # killed mid-write
    result = fit(make_model(), step_fn, ToyStream(), cfg(steps=20, eval_every=0, resume="auto"), run)
    assert result.step == 20 and "torn" in caplog.text
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 21))


class Uint8Images(Dataset):
    """Items as the image datasets give them: uint8 ``image`` [3, 4, 4], two-view ``views``."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, k: int):
        g = torch.Generator().manual_seed(k)
        image = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=g)
        return {"image": image, "views": torch.stack([image, image.flip(-1)]), "label": k}


def test_uint8_images_reach_step_fn_normalised_and_other_entries_untouched(tmp_path):
    from common.data.transforms import to_model_input

    seen = []

    def step(model, batch):
        seen.append(batch)
        return {"loss": model(batch["image"].flatten(1)).mean()}

    data = Uint8Images()
    fit(nn.Linear(48, 1), step, data, cfg(steps=2, eval_every=0, ckpt_every=0), tmp_path / "run")
    images = torch.stack([data[k]["image"] for k in range(8)])
    assert seen[0]["image"].dtype == torch.float32
    assert torch.equal(seen[0]["image"], to_model_input(images))
    assert torch.equal(seen[0]["views"], to_model_input(torch.stack([data[k]["views"] for k in range(8)])))
    assert seen[0]["label"].tolist() == list(range(8))
