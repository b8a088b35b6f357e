"""`engine inspect DIR [--grid FILE.png]`: verify a dataset (engine.data.manifest.verify_dataset:
sizes, digests and label ranges against its manifest, as a sweep does before using it), print its
manifest and draw a grid of samples. A damaged dataset is one line naming the file, like a sweep's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import paths
from engine.atomic import atomic_path
from engine.data.beton import BetonFile
from engine.errors import EngineError
from engine.data.manifest import summary, verify_dataset


def inspect(dataset: Path, grid: Path | None = None, *, split: str = "test", count: int = 24,
            seed: int = 0) -> str:
    dataset = Path(dataset)
    manifest = verify_dataset(dataset)
    text = summary(manifest)
    files = ", ".join(info["file"] for info in manifest["splits"].values())
    text += f"\nverified     {files}: sizes, digests and labels match the manifest"
    if grid is not None:
        write_grid(dataset, Path(grid), manifest, split=split, count=count, seed=seed)
        text += f"\ngrid         {grid}"
    return text


def write_grid(dataset: Path, png: Path, manifest: dict, *, split: str = "test", count: int = 24,
               seed: int = 0, columns: int = 6) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if png.suffix.lower() != ".png":
        raise EngineError(f"--grid must name a .png file, got {png}")
    f = BetonFile(paths.split_file(dataset, split))
    picks = np.sort(np.random.default_rng(seed).choice(len(f), size=min(count, len(f)), replace=False))
    images = f.read("image", picks)
    alice, bob = f.read("alice_label", picks), f.read("bob_label", picks)
    names_a = manifest["sources"]["left"]["classes"]
    names_b = manifest["sources"]["right"]["classes"]
    rows = -(-len(picks) // columns)
    h, w, _ = images.shape[1:]
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.2 * w / (2 * h), rows * 1.5),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, a, b in zip(axes.ravel(), images, alice, bob):
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"A: {names_a[a]}  B: {names_b[b]}", fontsize=8)
    spec = manifest["spec"]
    fig.suptitle(f"{spec['left']} : {spec['right']}   beta = {spec['beta']:g}   ({split} split)",
                 fontsize=10)
    fig.tight_layout()
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as exc:
        raise EngineError(f"cannot write {png}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
