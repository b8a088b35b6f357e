"""Turning `engine sweep` flag strings into values (comma-separated lists), one line per error."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from engine.errors import EngineError
from engine.spec import BASELINES

if TYPE_CHECKING:
    from engine.sweep.spec import SweepSpec


def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise EngineError(f"--{flag} must be a comma-separated list without empty items, got {text!r}")
    return items


def parse_floats(text: str, flag: str) -> list[float]:
    out = []
    for t in _items(text, flag):
        try:
            out.append(float(t))
        except ValueError:
            raise EngineError(f"--{flag}: {t!r} is not a number") from None
    return out


def parse_ints(text: str, flag: str, *, minimum: int = 0) -> list[int]:
    out = []
    for t in _items(text, flag):
        try:
            value = int(t)
        except ValueError:
            raise EngineError(f"--{flag}: {t!r} is not an integer") from None
        if value < minimum:
            raise EngineError(f"--{flag}: {value} is below {minimum}")
        out.append(value)
    return out


def parse_betas(text: str) -> list[float]:
    betas = parse_floats(text, "betas")
    for b in betas:
        if not (math.isfinite(b) and 0 <= b <= 1):
            raise EngineError(f"--betas: {b:g} is outside [0, 1]")
    return betas


def parse_layers(text: str) -> str | list[int]:
    return "all" if str(text).strip().lower() == "all" else parse_ints(text, "layers", minimum=1)


def _positives_or(text: str, flag: str, keyword: str, what: str) -> list[int | None]:
    """Comma-separated positive integers, `keyword` standing for None."""
    out = []
    for t in _items(text, flag):
        if t.lower() == keyword:
            out.append(None)
        elif t.isdigit() and int(t) >= 1:
            out.append(int(t))
        else:
            raise EngineError(f"--{flag}: {t!r} is not {what} or '{keyword}'")
    return out


def parse_n_bobs(text: str) -> list[int | None]:
    return _positives_or(text, "n-bob", "all", "a positive integer")


def parse_names(text: str, flag: str, allowed: Sequence[str]) -> list[str]:
    names = [t.lower() for t in _items(text, flag)]
    for n in names:
        if n not in allowed:
            raise EngineError(f"--{flag}: unknown value {n!r}; choose from: {', '.join(allowed)}")
    return names


def parse_baselines(text: str) -> list[str]:
    return [] if str(text).strip().lower() == "none" else parse_names(text, "baselines", BASELINES)


def parse_block_shuffles(text: str) -> list[int | None]:
    """"1,4,none" -> [1, 4, None]: block sizes in pixels, 'none' = unshuffled."""
    return list(dict.fromkeys(_positives_or(text, "block-shuffle", "none",
                                            "a positive block size")))


# From flags to a SweepSpec ------------------------------------------------------------------------

def built_datasets(roots) -> list[dict]:
    """Manifests of the complete, unshuffled pair datasets under `roots` (directories of dataset
    directories, as `engine build-data` writes them); missing roots are skipped."""
    from engine.data.manifest import read_manifest
    from engine.errors import EngineError as _Error
    found = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if not (d / "manifest.json").is_file():
                continue
            try:
                m = read_manifest(d)
            except _Error:
                continue
            spec = m.get("spec", {})
            if "beta" in spec and "left" in spec and spec.get("block_shuffle") is None:
                found.setdefault(m["key"], {**m, "_root": str(root)})
    return list(found.values())


def sweep_spec(args) -> "SweepSpec":
    """The SweepSpec of `engine sweep` flags (argparse namespace). Without --pair/--betas the
    datasets `engine build-data` has built are swept: under $ENGINE_OUT or ./out/datasets (its
    default) and under <--out>/datasets."""
    from engine import paths
    from engine.spec import TRANSFER_MODES, Training
    from engine.sweep.spec import SweepSpec
    if args.executor == "ray":
        from engine.sweep.spec import require_ray
        require_ray()
    pair, betas, data = args.pair, args.betas, {}
    if pair is None or betas is None:
        roots = [paths.datasets_out(None), paths.sweep_datasets(paths.sweep_out(args.out))]
        pair, betas, data = _from_built(roots, pair, betas, args)
    return SweepSpec(
        pair=pair, betas=tuple(parse_betas(betas) if isinstance(betas, str) else betas),
        layers=parse_layers(args.layers), seeds=tuple(parse_ints(args.seeds, "seeds")),
        archs=tuple(parse_names(args.arch, "arch", ("mlp", "cnn", "resnet18"))),
        modes=tuple(parse_names(args.modes, "modes", TRANSFER_MODES)),
        baselines=tuple(parse_baselines(args.baselines)), n_bobs=tuple(parse_n_bobs(args.n_bob)),
        bob=Training(args.epochs, args.optimizer, args.lr, args.batch_size),
        alice=Training(args.alice_epochs, args.optimizer, None, args.batch_size),
        depth=args.depth, width=args.width, n_train=data.get("n_train", args.n_train),
        n_test=data.get("n_test", args.n_test), data_seed=data.get("seed", 0),
        fit=data.get("fit", "pad"), image_size=data.get("image_size", 32),
        block_shuffles=tuple(parse_block_shuffles(args.block_shuffle)), data_root=args.data_root,
        datasets_dir=data.get("root"), device=args.device,
        device_budget_gb=args.device_budget_gb, executor=args.executor, max_group=args.max_group,
        precision=getattr(args, "precision", "auto"),
        ray_address=getattr(args, "ray_address", None),
        cpus_per_unit=getattr(args, "cpus_per_unit", 1.0),
        gpus_per_unit=getattr(args, "gpus_per_unit", 0.0),
        max_retries=getattr(args, "max_retries", 2))


def _from_built(roots, pair, betas, args) -> tuple[str, str | list[float], dict]:
    """(pair, betas, dataset options) of the datasets found under `roots`, printed to stderr."""
    import sys
    found = built_datasets(roots)
    if pair is not None:
        from engine.data.build import parse_pair
        want = ":".join(parse_pair(pair))
        found = [m for m in found if f"{m['spec']['left']}:{m['spec']['right']}" == want]
    where = " or ".join(str(r) for r in roots)
    if not found:
        raise EngineError(f"no built datasets{' of ' + pair if pair else ''} under {where}; "
                          "build one first, e.g. `engine build-data --pair mnist:svhn --beta 0.75`"
                          ", or give --pair and --betas")
    groups: dict[tuple, list[dict]] = {}
    for m in found:
        s = m["spec"]
        key = (s["left"], s["right"], s["seed"], s["n_train"], s["n_test"], s.get("fit", "pad"),
               s.get("image_size", 32), m["_root"])
        groups.setdefault(key, []).append(m)
    if len(groups) > 1:
        names = sorted({f"{k[0]}:{k[1]} (seed {k[2]}, {k[3]} train) in {k[7]}" for k in groups})
        raise EngineError(f"built datasets of several kinds found ({'; '.join(names)}); choose "
                          "with --pair (and --betas), or --n-train/--out")
    (left, right, seed, n_train, n_test, fit, size, root), ms = next(iter(groups.items()))
    found_betas = sorted({float(m["spec"]["beta"]) for m in ms})
    chosen = found_betas if betas is None else parse_betas(betas)
    print(f"sweeping the datasets built under {root}: {left}:{right} at beta "
          f"{', '.join(f'{b:g}' for b in chosen)}", file=sys.stderr)
    return (f"{left}:{right}", chosen, {"seed": seed, "n_train": n_train, "n_test": n_test,
                                        "fit": fit, "image_size": size, "root": root})
