"""Train the Fashion-MNIST classifier behind metrics.backbone=classifier (val/fd_classifier) once,
with the settings the metric uses by default, and print its accuracy on the official test split.

    python experiments/vae_samplers/classifier.py [--data-root /usr/share/datasets/fashion-mnist]
        [--cache-dir ~/.cache/genlab] [--threads 2]

It writes the weights where the metric looks for them (cache_dir, keyed by the training
settings), so later evaluations load them instead of training; ``--out FILE`` also copies them to
a file for ``metrics.classifier_weights``. The classifier never sees a generated image in training.
"""

import argparse
import json
import shutil
import time

import torch

from genlab.metrics.classifier import FASHION_ROOT, FashionClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=FASHION_ROOT)
    parser.add_argument("--cache-dir", default="~/.cache/genlab")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--out", default=None, help="also copy the weights file here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    clf = FashionClassifier(cache_dir=args.cache_dir, data_root=args.data_root)
    if args.out:
        shutil.copyfile(clf.path, args.out)
    print(json.dumps({
        "test_accuracy": clf.test_accuracy,
        "test_split": "Fashion-MNIST official test split, 10,000 images",
        "settings": clf.settings,
        "weights": str(clf.path),
        "sha256": clf.sha256,
        "seconds": round(time.time() - start, 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
