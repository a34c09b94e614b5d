"""kNN retrieval accuracy of a checkpoint's image embeddings: top-1 and top-3, both directions.

Chapter 1's validation (thesis draft 002, listing 1): the CIFAR train split is the bank and
the test split the queries, and the reverse; a query is correct at k if any of its k most
cosine-similar bank images has its label. Done for the fine (CIFAR-100) and the coarse
(CIFAR-10) labels; the synthetic stand-ins have 100 (colour + shape) and 10 (shape) classes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from common.knn import KnnConfig, KnnSets
from eval import cli

LABELS = ("fine", "coarse")


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    p = cli.parser("knn_cifar", __doc__.splitlines()[0], "--labels fine")
    p.add_argument("--labels", default=",".join(LABELS), metavar="LABELS",
                   help="comma-separated label sets: fine (CIFAR-100), coarse (CIFAR-10); "
                        "default: fine,coarse")
    args = p.parse_intermixed_args(argv)
    labels = args.labels.split(",")
    if not set(labels) <= set(LABELS):
        p.error(f"--labels {args.labels}: choose from {','.join(LABELS)}")
    run = cli.load(args)
    cfg = run.cfg
    device = next(run.model.parameters()).device
    sets = KnnSets(cfg.data, KnnConfig(labels=labels), cfg.eval.batch_size)  # as the chapters
    rows = sets.rows(sets.metrics(run.model.encode_image, device), run.meta("knn_cifar"))
    return cli.finish(run, rows, ["knn_top1", "knn_top3"])


if __name__ == "__main__":
    cli.entry(main)
