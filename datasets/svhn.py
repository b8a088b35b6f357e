"""SVHN cropped digits: `SVHN/{train,test}_32x32.mat` under the data root.

The files are MATLAB v5 (http://ufldl.stanford.edu/housenumbers/): `X` is uint8 [32, 32, 3, N] and
`y` is [N, 1] with values 1..10, where 10 stands for the digit 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from engine.datasets.source import Located, corrupt, missing_files
from engine.datasets.split import Decoded

SUBDIR = "SVHN"
CLASSES = tuple("0123456789")


@dataclass(frozen=True)
class SvhnSource:
    name: str = "svhn"
    uses_image_size: bool = False

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        path = root / SUBDIR / f"{split}_32x32.mat"
        if not path.is_file():
            raise missing_files(self.name, [path.name], root, SUBDIR)
        return Located([path], one_split=False)

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        (path,) = self.locate(arg, root, part).files
        try:
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        # A damaged .mat file can fail inside scipy's parser with almost any exception type.
        except Exception as e:
            raise corrupt(path, str(e) or type(e).__name__) from None
        if "X" not in mat or "y" not in mat:
            raise corrupt(path, "no X or no y variable")
        x, y = mat["X"], mat["y"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise corrupt(path, f"X is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, N]")
        if y.size != x.shape[3]:
            raise corrupt(path, f"{x.shape[3]} images but {y.size} labels")
        images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
        labels = y.reshape(-1).astype(np.int64)
        labels[labels == 10] = 0
        return Decoded(images, labels, CLASSES)


SVHN = SvhnSource()
