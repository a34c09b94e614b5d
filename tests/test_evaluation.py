"""common.evaluation: metric keys and values on a model whose embeddings are known."""
import torch
from torch.utils.data import Dataset

from common.evaluation import embed_images, knn_metrics


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
