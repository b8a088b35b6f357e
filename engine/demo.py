"""`make demo`: build mnist:svhn at beta 0.75 (or mnist:fashion when SVHN cannot be had), then show
the manifest summary and write a sample grid."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.build import build_data
from engine.errors import EngineError
from engine.inspect import inspect


def demo(data_root=None, out: Path = Path("out/demo")) -> int:
    try:
        path = build_data("mnist:svhn", 0.75, data_root=data_root, out=out / "datasets",
                          log=lambda m: print(m, file=sys.stderr))
    except EngineError as exc:
        print(f"SVHN is not available ({exc}); building mnist:fashion instead", file=sys.stderr)
        path = build_data("mnist:fashion", 0.75, data_root=data_root, out=out / "datasets",
                          log=lambda m: print(m, file=sys.stderr))
    print(inspect(path, out / "samples.png"))
    print(path)
    return 0
