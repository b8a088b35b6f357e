"""Source datasets for the two sides of a pair: one split of a named source as memory-mapped arrays.

    from engine.datasets import load
    split = load("mnist", "train", root=paths.data_root())
    split.images  # uint8 [N, H, W, C]; split.labels  # int64 [N]

Sources (see NAMES): mnist, fashion, emnist-letters, svhn and cifar10 read the official files in
torchvision's layout under the data root; folder:PATH and npz:PATH read the user's own images
(PATH relative to the working directory). Sources with a single split get a seeded 80/20
train/test hold-out (holdout.py). Decoded splits are cached (cache.py), so only the first load of
a split decodes anything.
"""
from engine.datasets.registry import NAMES, load, parse_source, source_files
from engine.datasets.split import Split

__all__ = ["NAMES", "Split", "load", "parse_source", "source_files"]
