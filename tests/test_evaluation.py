"""common.evaluation: metric keys and values on a model whose embeddings are known."""
import gc
import os

import torch
from torch.utils.data import Dataset

from common import evaluation
from common.data.transforms import to_model_input
from common.evaluation import embed_images, eval_loader, knn_metrics


class Points(Dataset):
    """'Images' that are already their embeddings: a one-hot of the label."""

    def __init__(self, labels):
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.nn.functional.one_hot(self.labels[i], 3).float(), "label": self.labels[i]}


def test_knn_metrics_keys_and_perfect_separation():
    bank, queries = Points([0, 1, 2, 0, 1, 2]), Points([2, 1, 0])
    out = knn_metrics(lambda x: x, bank, queries, torch.device("cpu"), ks=(1, 3), batch_size=2)
    assert set(out) == {"knn_top1", "knn_top3", "knn_rev_top1", "knn_rev_top3"}
    assert all(v == 100.0 for v in out.values())


def test_embed_images_keeps_order_and_labels():
    data = Points([2, 0, 1, 1])
    emb, labels = embed_images(lambda x: 2 * x, data, torch.device("cpu"), batch_size=3)
    assert labels.tolist() == [2, 0, 1, 1]
    assert torch.equal(emb.argmax(-1), labels) and emb.max() == 2


class Pids(Dataset):
    """Items that say which process made them."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "pid": os.getpid()}


def test_eval_loader_keeps_its_workers_across_evaluations_and_goes_with_its_dataset():
    data = Pids()
    loader = eval_loader(data, 2, num_workers=1)
    assert eval_loader(data, 2, num_workers=1) is loader and eval_loader(data, 4, 1) is not loader
    first = {int(p) for batch in loader for p in batch["pid"]}
    again = {int(p) for batch in eval_loader(data, 2, num_workers=1) for p in batch["pid"]}
    assert first == again and os.getpid() not in first  # the same worker, not a new one
    assert eval_loader(data, 2).persistent_workers is False  # no workers: a plain loader
    del data, loader
    gc.collect()
    assert len(evaluation._LOADERS) == 0


def test_embed_images_normalises_uint8_images_on_the_device():
    data = Pids()
    emb, _ = embed_images(lambda x: x.flatten(1), data, torch.device("cpu"), batch_size=3)
    zero = to_model_input(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).flatten(1)
    assert emb.dtype == torch.float32 and torch.equal(emb, zero.expand(4, -1))
