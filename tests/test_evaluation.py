"""common.evaluation: metric keys and values on a model whose embeddings are known."""
import gc
import os

import pytest
import torch
from torch.utils.data import Dataset

from common import evaluation
from common.data.transforms import to_model_input
from common.evaluation import embed_images, embed_texts, eval_loader


class Points(Dataset):
    """'Images' that are already their embeddings: a one-hot of the label."""

    def __init__(self, labels):
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.nn.functional.one_hot(self.labels[i], 3).float(), "label": self.labels[i]}


def test_embed_images_keeps_order_and_labels():
    data = Points([2, 0, 1, 1])
    emb, labels = embed_images(lambda x: 2 * x, data, torch.device("cpu"), batch_size=3)
    assert labels.tolist() == [2, 0, 1, 1]
    assert torch.equal(emb.argmax(-1), labels) and emb.max() == 2


def word_tokenizer(words):
    """A real :class:`Tokenizer` over a word-level vocabulary (ids 0-3 are the specials)."""
    import tokenizers

    from common.data.tokenizer import Tokenizer

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words])}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return Tokenizer(model, bos_id=0, eos_id=2, pad_id=1)


@pytest.mark.parametrize("alibi, learned_pos", [(True, False), (False, True)])
def test_embed_texts_length_sorted_batches_equal_padding_to_max_len(alibi, learned_pos):
    from common.config import TextEncoderConfig
    from common.models.encoder import build_text_encoder

    words = [f"w{i}" for i in range(20)]
    tokenizer, max_len = word_tokenizer(words), 12
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 20, (int(n),), generator=g))
             for n in torch.randint(1, 15, (37,), generator=g)]  # some longer than max_len
    torch.manual_seed(0)
    cfg = TextEncoderConfig(dim=16, depth=2, heads=2, vocab_size=24, max_len=max_len,
                            alibi=alibi, learned_pos=learned_pos)
    encoder = build_text_encoder(cfg, pad_id=1).eval()

    def encode(ids, pad):
        return encoder(ids, pad).x[:, 0]  # the BOS output sees every real token

    # reference: texts in their order, every batch padded to max_len
    ids, pad = tokenizer.encode_batch(texts, max_len)
    ids = torch.nn.functional.pad(ids, (0, max_len - ids.shape[1]), value=1)
    pad = torch.nn.functional.pad(pad, (0, max_len - pad.shape[1]), value=True)
    expected = torch.cat([encode(ids[s:s + 8], pad[s:s + 8]) for s in range(0, len(texts), 8)])
    with torch.no_grad():
        for batch_size in (1, 5, 8, 64):
            got = embed_texts(encode, texts, tokenizer, max_len, torch.device("cpu"), batch_size)
            torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-5)
        # the comparison can fail: without the padding mask the pads change the embeddings
        unmasked = embed_texts(lambda i, p: encode(i, torch.zeros_like(p)), texts, tokenizer,
                               max_len, torch.device("cpu"), 5)
    assert (unmasked - expected).abs().max() > 1e-3


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
