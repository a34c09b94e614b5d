"""Evaluation CLIs on saved checkpoints, result comparison and the thesis figures.

    python -m eval.retrieval RUN          # COCO-5k / Flickr-1k style recall@1/5/10, both directions
    python -m eval.zero_shot_imagenet RUN # CLIP-style zero-shot classification, top-1/top-5
    python -m eval.knn_cifar RUN          # kNN top-1/top-3, train->test and test->train, fine/coarse
    python -m eval.finetune RUN           # linear probe / fine-tuning (images) and GLUE (text)
    python -m eval.compare                # result CSVs side by side, mean/std over seeds
    python -m eval.plot                   # figures into results/figures/

Every number comes from :mod:`common.evaluation` / :mod:`common.finetune`, the code the
chapters use during training, so CLI and chapter rows are comparable.
"""
