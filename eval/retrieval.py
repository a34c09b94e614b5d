"""Zero-shot image-text retrieval of a checkpoint: recall@1/5/10, image->text and text->image.

The COCO Karpathy 5k and Flickr30K 1k protocol (full preset) or its synthetic stand-ins
(tiny): every image against every caption, an image is a hit at k if any of its captions
ranks in its top k, a caption if its image does (:func:`common.retrieval.retrieval_recall`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from common.data.sources import dataset_name
from common.experiment import RETRIEVAL_KEYS, EvalSets
from eval import cli


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    p = cli.parser("retrieval", __doc__.splitlines()[0], "--sets coco_test")
    p.add_argument("--sets", default=None, metavar="ROLE[,ROLE]",
                   help="comma-separated retrieval roles (default: the run's eval.retrieval, "
                        "coco_test,flickr_test)")
    args = p.parse_intermixed_args(argv)
    run = cli.load(args, needs=("encode_image", "encode_text"))
    if args.sets:
        run.cfg.eval.retrieval = args.sets.split(",")
    run.cfg.eval.zero_shot = ""
    sets = EvalSets(run.cfg.data, run.cfg.eval)
    meta = run.meta("retrieval")
    rows = [{**meta, "dataset": dataset_name(run.cfg.data, role), **metrics}
            for role, metrics in sets.retrieval_metrics(run.model, run.tokenizer).items()]
    return cli.finish(run, rows, RETRIEVAL_KEYS)


if __name__ == "__main__":
    cli.entry(main)
