"""The only module that imports FFCV (optional: `pip install engine-transfer[ffcv]`).

Used for (1) FFCV's own `Loader` over the engine's `.beton` files, for datasets too large to keep on
the device, and (2) FFCV's `DatasetWriter`, the reference the engine's writer is tested and
benchmarked against.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from engine.errors import EngineError


def available() -> bool:
    try:
        import ffcv  # noqa: F401
    except Exception:
        return False
    return True


def _require():
    try:
        import ffcv
    except Exception as exc:
        raise EngineError(f"FFCV is not importable ({exc.__class__.__name__}: {exc}); install it with "
                          "`pip install 'engine-transfer[ffcv]'` after `apt-get install pkg-config "
                          "libopencv-dev libturbojpeg0-dev`") from None
    return ffcv


class _ArrayDataset:
    """Indexable (image, int, int, ...) samples for `DatasetWriter.from_indexed_dataset`."""

    def __init__(self, image: np.ndarray, scalars: list[np.ndarray]):
        self.image, self.scalars = image, scalars

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i):
        return (self.image[i],) + tuple(int(s[i]) for s in self.scalars)


def write_with_dataset_writer(path: str | os.PathLike, image: np.ndarray,
                              scalars: dict[str, np.ndarray], *, image_field: str = "image",
                              num_workers: int = 1, quiet: bool = True) -> None:
    """Write `image` (uint8 [N,H,W,C]) and integer columns with FFCV's own `DatasetWriter`."""
    ffcv = _require()
    from ffcv.fields import IntField, NDArrayField

    fields = {image_field: NDArrayField(dtype=image.dtype, shape=tuple(image.shape[1:]))}
    fields.update({name: IntField() for name in scalars})
    writer = ffcv.writer.DatasetWriter(str(path), fields, num_workers=num_workers)
    dataset = _ArrayDataset(image, list(scalars.values()))
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
        writer.from_indexed_dataset(dataset)


def loader(path: str | os.PathLike, *, batch_size: int, num_workers: int = 1, shuffle: bool = False,
           seed: int = 0, drop_last: bool = False, indices: np.ndarray | None = None):
    """FFCV `Loader` yielding NumPy batches of every field (arrays as stored, ints as int64 [B, 1]).
    The Loader reuses its batch buffers: copy a batch that must outlive the next iteration."""
    _require()
    from ffcv.fields.basics import FloatDecoder, IntDecoder
    from ffcv.fields.decoders import NDArrayDecoder
    from ffcv.loader import Loader, OrderOption

    from engine.data.beton import FLOAT, INT, BetonFile

    decoders = {INT: IntDecoder, FLOAT: FloatDecoder}
    fields = BetonFile(path).fields
    pipelines = {name: [decoders.get(f.kind, NDArrayDecoder)()] for name, f in fields.items()}
    return Loader(str(Path(path)), batch_size=batch_size, num_workers=num_workers,
                  order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, seed=seed,
                  drop_last=drop_last, indices=indices, pipelines=pipelines)
