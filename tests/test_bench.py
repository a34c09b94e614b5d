"""``make bench PRESET=full`` pieces that run without a GPU: FLOP counting, MFU arithmetic,
the peak table, chapter discovery and each chapter's full model built at a tiny shape."""
import logging

import pytest
import torch
from torch import nn

from common import bench
from common.bench import BenchCase, count_flops, measure, mfu, peak_tflops


def test_flops_of_a_linear_training_step():
    B, n_in, n_out = 4, 16, 8
    layer = nn.Linear(n_in, n_out)
    x = torch.randn(B, n_in, requires_grad=True)
    # forward 2*B*in*out, backward twice that (grad of the input and of the weight)
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * B * n_in * n_out
    assert count_flops(lambda: layer(x.detach()).sum().backward()) == 2 * 2 * B * n_in * n_out


def test_mfu_and_peak_table():
    assert mfu(2e12, 3.0, 1000.0) == pytest.approx(0.006)
    assert mfu(2e12, 3.0, None) is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", env={}) == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", env={}) == 756.0
    assert peak_tflops("NVIDIA H200", env={}) == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", env={}) == 312.0
    assert peak_tflops("Tesla T4", env={}) is None
    assert peak_tflops("Tesla T4", env={"MMKD_PEAK_TFLOPS": "65"}) == 65.0


def test_measure_reports_throughput_and_flops_on_cpu():
    model = nn.Linear(8, 2)
    case = BenchCase(model, lambda m, b: m(b["x"]).pow(2).mean(), {"x": torch.randn(5, 8)})
    out = measure(case, steps=2, device="cpu", amp_dtype=None)
    assert out["batch"] == 5 and out["flops_per_step"] == 2 * 2 * 5 * 8 * 2
    assert out["samples_per_s"] == pytest.approx(5 * out["steps_per_s"])
    assert "mfu" not in out  # MFU needs a GPU's peak


TINY_SHRE = ["image.dim=32", "image.heads=2", "image.depth=1", "image.image_size=32", "text.dim=32",
             "text.heads=2", "text.depth=1", "text.max_len=8", "text.vocab_size=64",
             "data.image_size=32", "data.max_text_len=8", "train.batch_size=2", "train.precision='no'"]


def test_shre_full_model_builds_and_steps_at_a_tiny_shape():
    assert "shre" in bench.benchable_chapters()
    out = bench.bench_chapter("shre", steps=1, overrides=TINY_SHRE, device="cpu")
    assert out["chapter"] == "shre" and out["batch"] == 2
    # a ResNet-50 teacher forward on 32 px images alone is ~0.17 GFLOP per image
    assert out["flops_per_step"] > 2 * 0.1e9 and out["steps_per_s"] > 0
    assert out["params_m"] > 0


def test_full_bench_on_cpu_stops_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.ERROR, logger="bench"), pytest.raises(SystemExit) as exit_:
        bench.main(["--preset", "full"])
    assert exit_.value.code == 2
    assert "needs a CUDA GPU" in caplog.text and len(caplog.records) == 1


def test_retrieval_and_bank_benches_report_ratios_to_their_baselines():
    r = bench.bench_retrieval(n_images=40, dim=16, repeats=1)
    assert r["retrieval_vs_topk"] == pytest.approx(r["retrieval_s"] / r["matmul_topk_s"])
    assert r["retrieval_s"] > 0 and r["matmul_topk_s"] > 0
    r = bench.bench_itc_bank("cpu", batch=8, dim=16, bank_size=64, repeats=1)
    assert r["bank_vs_plain"] == pytest.approx(r["itc_bank_ms"] / r["itc_plain_ms"])
    assert r["itc_bank_ms"] > 0 and r["itc_plain_ms"] > 0


def test_tiny_training_bench_builds_the_shre_step():
    out = bench.bench_train_tiny(steps=1, device="cpu")
    assert out["preset"] == "tiny" and out["batch"] > 0 and out["steps_per_s"] > 0


def test_image_loader_bench_reports_both_paths_and_their_ratios():
    threads = torch.get_num_threads()
    out = bench.bench_image_loader(num_images=2, samples=4, rounds=1, image_size=16,
                                   jpeg_size=(40, 30), batch_size=2)
    assert out["pil_sample_kb"] == 4 * out["torchvision_uint8_sample_kb"]  # float32 vs uint8
    for how in ("worker", "loader"):
        pil, ours = out[f"{how}_pil_per_cpu_s"], out[f"{how}_torchvision_uint8_per_cpu_s"]
        assert pil > 0 and ours > 0 and out[f"{how}_ratio"] == pytest.approx(ours / pil)
    assert torch.get_num_threads() == threads  # measured on one thread, then restored
