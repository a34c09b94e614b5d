"""Chapter 1 (unimodal vision KD): the shared patch embedding, the objective, the student's
fine-tuning learning rates, and the tiny preset end to end with few steps."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from common.config import ConfigError, TrainConfig, parse_cli
from common.data.datasets import TrainStream
from common.finetune import EncoderClassifier, finetunable, image_head, layer_decay_param_groups
from common.models.embed import ImageEmbed
from common.models import vision_student as vs
from common.models.encoder import build_image_encoder
from common.optim import build_optimizer
from common.results import COLUMNS
from common.train import fit

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "experiments" / "unimodal_vision_kd"
spec = importlib.util.spec_from_file_location("vision_kd_run", CHAPTER / "run.py")
vkd = importlib.util.module_from_spec(spec)
sys.modules["vision_kd_run"] = vkd  # dataclasses resolve string annotations through sys.modules
spec.loader.exec_module(vkd)

SMALL = ["teacher.encoder.dim=32", "teacher.encoder.depth=2", "teacher.encoder.heads=2",
         "student.dim=32", "student.heads=2", "student.depth=1"]
FEW_STEPS = SMALL + [
    "train.steps=4", "train.eval_every=2", "train.batch_size=16", "train.log_every=2",
    "teacher.train.steps=3", "teacher.train.batch_size=16",
    "knn.bank_size=200", "knn.query_size=100", "eval.batch_size=100",
    "finetune.train.steps=4", "finetune.train.batch_size=16", "finetune.eval_batch_size=100",
    "linear_probe.train.steps=4", "linear_probe.train.batch_size=16", "linear_probe.eval_batch_size=100"]
ALL_LAYERS = ["target.teacher_layers=0", "target.student_layers=0"]  # draft 003's eq. (3)-(5)
# THESIS.md chapter 1: lr_l = 1e-3 * 0.81^(L+1-l) for L=6, layers 0 (embedding) .. 7 (head)
THESIS_LR_TABLE = [2.3e-4, 2.8e-4, 3.5e-4, 4.3e-4, 5.3e-4, 6.6e-4, 8.1e-4, 1e-3]


def _teacher_and_student(overrides=()):
    """A random teacher of the preset's architecture (no bootstrap) and the chapter's student on it."""
    cfg = parse_cli(vkd.VisionKdConfig, CHAPTER, SMALL + list(overrides))
    teacher = build_image_encoder(cfg.teacher.encoder).eval().requires_grad_(False)
    cfg.shared_embed = vkd.shared_embed_settings(teacher.embed)
    return cfg, teacher, vkd.build_model(cfg, embed=teacher.embed)


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"image": torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))}


def test_the_patch_embedding_is_shared_and_runs_once_per_step(tmp_path, monkeypatch):
    cfg, teacher, model = _teacher_and_student(["train.steps=3", "train.batch_size=4"])
    assert model.image.embed is teacher.embed  # one module, not a copy
    assert not any(p.requires_grad for p in teacher.embed.parameters())
    calls = []
    real_forward = ImageEmbed.forward
    monkeypatch.setattr(ImageEmbed, "forward", lambda self, x: calls.append(len(x)) or real_forward(self, x))
    block_inputs = {}
    teacher.blocks[0].register_forward_pre_hook(lambda m, args: block_inputs.__setitem__("teacher", args[0]))
    model.image.blocks[0].register_forward_pre_hook(lambda m, args: block_inputs.__setitem__("student", args[0]))

    fit(model, lambda m, batch: vkd.kd_losses(m, teacher, batch["image"], cfg.target),
        TrainStream(_Images(), seed=0), cfg.train, tmp_path, frozen=[teacher])
    assert calls == [4, 4, 4]  # 3 steps, one embedding of each batch of 4 images
    assert block_inputs["teacher"] is block_inputs["student"]  # the same tokens feed both
    assert all(p.grad is None for p in teacher.parameters())


def test_a_student_that_copies_the_teacher_has_zero_loss_and_eq6_weights_the_steps():
    cfg, teacher, model = _teacher_and_student(ALL_LAYERS + ["student.depth=2", "student.mlp_ratio=4.0",
                                                             "student_init=teacher"])
    vs.init_from_teacher(model.image, teacher)
    images = torch.randn(3, 3, 32, 32)
    assert vkd.kd_losses(model, teacher, images, cfg.target)["loss"].item() == pytest.approx(0, abs=1e-10)

    cfg, teacher, model = _teacher_and_student(ALL_LAYERS)
    out = vkd.kd_losses(model, teacher, images, cfg.target)
    # eq. (6): one mean over the 1 + 16 time steps, so CLS weighs 1/17 and the patches 16/17
    assert out["loss"].item() == pytest.approx((out["kd_cls"] + 16 * out["kd_patches"]).item() / 17)
    # by hand: instance norm over time per layer, mean over layers, parameter-free layer norm
    tokens = teacher.embed(images)

    def target(layers):
        h = torch.stack([F.instance_norm(x.transpose(1, 2)).transpose(1, 2) for x in layers]).mean(0)
        return F.layer_norm(h, (32,))

    y = target(teacher.forward_tokens(tokens, return_layers=True).layers)
    y_hat = target(model.image.forward_tokens(tokens, return_layers=True).layers)
    assert out["loss"].item() == pytest.approx(F.mse_loss(y_hat, y).item(), rel=1e-5)
    # top-k: only the teacher's last layer
    cfg.target.teacher_layers = 1
    y_last = target(teacher.forward_tokens(tokens, return_layers=True).layers[-1:])
    assert vkd.kd_losses(model, teacher, images, cfg.target)["loss"].item() == pytest.approx(
        F.mse_loss(y_hat, y_last).item(), rel=1e-5)


def test_fine_tuning_learning_rates_of_a_six_block_student_match_the_thesis_table():
    _, _, model = _teacher_and_student(["student.depth=6"])
    classifier = EncoderClassifier(finetunable(model.image), image_head(32, 100))
    groups = layer_decay_param_groups(classifier, weight_decay=0.05, layer_decay=0.81)
    optimizer = build_optimizer(classifier, TrainConfig(lr=1e-3), groups)  # what fit() builds
    names = {id(p): n for n, p in classifier.named_parameters()}

    def layer(name):  # the table's numbering: embedding 0, blocks 1..6, head 7
        if name.startswith("encoder.embed."):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return 7

    lrs = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lrs.setdefault(layer(names[id(p)]), set()).add(group["lr"])
    assert sorted(lrs) == list(range(8)) and all(len(v) == 1 for v in lrs.values())
    table = [lrs[i].pop() for i in range(8)]
    assert [float(f"{lr:.1e}") for lr in table] == THESIS_LR_TABLE
    assert table == pytest.approx([1e-3 * 0.81 ** (7 - i) for i in range(8)])
    # the distilled student itself keeps the teacher's embedding frozen: no layer 0 without the copy
    frozen = EncoderClassifier(model.image, image_head(32, 100))
    grouped = {id(p) for g in layer_decay_param_groups(frozen, 0.05, 0.81) for p in g["params"]}
    assert not any(id(p) in grouped for p in model.image.embed.parameters())


def test_the_eval_clis_rebuild_the_student_from_its_config_alone():
    cfg, teacher, model = _teacher_and_student()
    rebuilt = vkd.build_model(cfg)  # no teacher: an embedding shaped by cfg.shared_embed
    assert rebuilt.image.embed is not teacher.embed
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval().encode_image(images), model.eval().encode_image(images))
    assert model.encode_image(images).shape == (2, 32)


def test_student_init_from_a_teacher_of_another_shape_and_a_cnn_teacher_are_one_line_errors(monkeypatch):
    cfg, teacher, model = _teacher_and_student(["student.mlp_ratio=3.0"])
    with pytest.raises(ConfigError, match="student.heads/mlp_ratio"):
        vs.init_from_teacher(model.image, teacher)
    cfg.student.patch_size = 4  # the teacher's embedding has 8-px patches
    with pytest.raises(ConfigError, match="student.patch_size=8"):
        vkd.build_model(cfg, embed=teacher.embed)
    monkeypatch.setattr(vs, "build_teacher", lambda *a: torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not a ViT encoder"):
        cnn = parse_cli(vkd.VisionKdConfig, CHAPTER, ["teacher.name=tiny-cnn"])
        vs.build_vit_teacher(cnn.teacher, cnn.data)


def test_tiny_run_writes_teacher_untrained_and_distilled_rows_and_resumes():
    rows = vkd.run(parse_cli(vkd.VisionKdConfig, CHAPTER, FEW_STEPS))
    csv = Path(os.environ["MMKD_RESULTS"]) / "unimodal_vision_kd" / "vision_kd.csv"
    df = pd.read_csv(csv)
    assert list(df.columns) == list(COLUMNS) and len(df) == len(rows)
    assert (df["chapter"] == "unimodal_vision_kd").all() and (df["teacher"] == "tiny-clr").all()
    knn = df[df["knn_top1"].notna()]
    assert set(knn["model"]) == {"teacher:tiny-clr", "student 1 block (untrained)",
                                 "student 1 block (distilled)"}
    for model in set(knn["model"]):
        assert sorted(knn[knn["model"] == model]["dataset"]) == [
            "syn-knn10", "syn-knn10 (reverse)", "syn-knn100", "syn-knn100 (reverse)"]
    assert knn["knn_top1"].between(0, 100).all() and (knn["knn_top1"] <= knn["knn_top3"]).all()
    ft = df[df["ft_top1"].notna()]
    assert sorted(ft["dataset"]) == ["syn-knn100 (fine-tune)", "syn-knn100 (fine-tune)",
                                     "syn-knn100 (linear probe)", "syn-knn100 (linear probe)"]
    assert (ft["ft_top1"] <= ft["ft_top5"]).all()
    by_model = df.groupby("model")["steps"].first()
    assert by_model["student 1 block (distilled)"] == 4 and by_model["teacher:tiny-clr"] == 3
    assert by_model["student 1 block (untrained)"] == 0
    assert df["model"].iloc[-1] == "student 1 block (distilled)"  # what the eval CLIs label the run by
    assert knn["model"].iloc[-1] == "student 1 block (distilled)"  # kNN rows are written first
    metrics = (Path(os.environ["MMKD_RUNS"]) / "unimodal_vision_kd" / "vision_kd" / "metrics.jsonl").read_text()
    assert '"kd_cls"' in metrics and '"knn100_top1"' in metrics and '"knn10_rev_top3"' in metrics

    # the same command again continues the finished run: nothing retrained, the same numbers
    again = vkd.run(parse_cli(vkd.VisionKdConfig, CHAPTER, FEW_STEPS))
    assert [r.get("knn_top1") for r in again] == [r.get("knn_top1") for r in rows]
    assert [r.get("ft_top1") for r in again] == [r.get("ft_top1") for r in rows]


def test_full_preset_without_data_names_what_is_missing_before_anything_is_built(tmp_path):
    proc = subprocess.run([sys.executable, str(CHAPTER / "run.py"), f"data.root={tmp_path}"],
                          cwd=ROOT, env={**os.environ, "PRESET": "full"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (Path(os.environ["MMKD_RUNS"]) / "unimodal_vision_kd").exists()


def test_full_preset_training_step_builds_and_runs_at_a_tiny_shape():
    from common import bench

    assert "unimodal_vision_kd" in bench.benchable_chapters()
    shape = ["data.image_size=32", "train.batch_size=2", "train.precision='no'"] + [
        f"{enc}.{key}" for enc in ("teacher.encoder", "student")
        for key in ("dim=32", "heads=2", "depth=2", "image_size=32")]
    out = bench.bench_chapter("unimodal_vision_kd", steps=1, overrides=shape, device="cpu")
    assert out["batch"] == 2 and out["flops_per_step"] > 0 and out["steps_per_s"] > 0


def test_student_built_from_data2vec2_blocks_under_another_teachers_embedding(tmp_path):
    """Draft 003's combination by config alone: ``student.init`` names a data2vec 2.0 image
    checkpoint (fairseq layout) whose first blocks start the student, while the patch embedding
    stays the teacher's (shared, frozen)."""
    from test_converters import DEPTH, add_block, rand, save_fairseq

    d, heads = 32, 4
    g = torch.Generator().manual_seed(7)
    p = "modality_encoders.IMAGE."
    sd = {p + "local_encoder.proj.weight": rand(d, 3, 8, 8, g=g),
          p + "local_encoder.proj.bias": rand(d, g=g),
          p + "fixed_positional_encoder.positions": rand(1, 16, d, g=g),
          p + "extra_tokens": rand(1, 1, d, g=g),
          p + "context_encoder.norm.weight": rand(d, g=g, norm=True),
          p + "context_encoder.norm.bias": rand(d, g=g)}
    for i in range(DEPTH):
        add_block(sd, f"blocks.{i}.", g)
    path = tmp_path / "data2vec2_image.pt"
    save_fairseq(path, sd, {"num_heads": heads, "norm_eps": 1e-6, "layer_norm_first": False,
                            "depth": DEPTH, "modalities": {"image": {"prenet_depth": 0}}})
    student = ["student.depth=2", "student.mlp_ratio=4.0", f"student.init={path}"]
    cfg, teacher, model = _teacher_and_student(student + [f"student.heads={heads}"])
    with pytest.raises(Exception, match="needs student.alibi=false"):  # the tiny preset's ALiBi blocks
        vs.init_student(cfg.student, cfg.student_init, model.image, teacher)
    cfg, teacher, model = _teacher_and_student(student + [f"student.heads={heads}", "student.alibi=false"])
    embed = {k: v.clone() for k, v in teacher.embed.state_dict().items()}
    vs.init_student(cfg.student, cfg.student_init, model.image, teacher)
    for i in range(2):
        torch.testing.assert_close(model.image.blocks[i].attn.qkv.weight, sd[f"blocks.{i}.attn.qkv.weight"])
        torch.testing.assert_close(model.image.blocks[i].mlp.fc2.bias, sd[f"blocks.{i}.mlp.fc2.bias"])
    assert model.image.embed is teacher.embed  # still shared ...
    for k, v in teacher.embed.state_dict().items():  # ... and untouched by the checkpoint
        torch.testing.assert_close(v, embed[k])
    cfg.student_init = "teacher"
    with pytest.raises(ConfigError, match="keep one"):
        vs.init_student(cfg.student, cfg.student_init, model.image, teacher)


def test_each_run_fine_tunes_in_its_own_folder(monkeypatch):
    """A second seed (or another run name) fine-tunes its own student: its fine-tuning runs are
    not the first run's finished ones continued (which would repeat their numbers)."""
    monkeypatch.setenv("SEEDS", "2")
    rows = vkd.run(parse_cli(vkd.VisionKdConfig, CHAPTER, FEW_STEPS + ["run=tuned"]))
    runs = Path(os.environ["MMKD_RUNS"]) / "unimodal_vision_kd"
    for name in ("tuned", "tuned-seed1"):
        assert sorted(p.name for p in (runs / name / "finetune").iterdir()) == [
            "distilled-100-full", "distilled-100-linear", "untrained-100-full", "untrained-100-linear"]
    assert sum(r.get("ft_top1") is not None for r in rows) == 8
    for tuning in ("distilled-100-linear", "untrained-100-full"):  # other students, other losses
        logs = [(runs / name / "finetune" / tuning / "metrics.jsonl").read_text() for name in ("tuned", "tuned-seed1")]
        assert '"loss"' in logs[0] and logs[0] != logs[1]
