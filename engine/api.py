"""The Python API: the commands as functions, for notebooks and scripts (README "From Python").

    import engine
    engine.build_data("mnist:fashion", 0.75, n_train=5000)       -> Path of the dataset
    res = engine.sweep(pair="mnist:fashion", betas=[0, 1], arch="mlp", out="out/s")
    df = engine.results("out/s")                                  -> pandas DataFrame
    engine.report("out/s")                                        -> [Path, ...] (report.html last)
    engine.status("out/s")                                        -> dict (as `status --json`)
    engine.pretrain("out/datasets/<key>", arch="cnn")             -> Path of Alice's weights
    engine.analyze("cka", "out/s", beta=[0, 1])                   -> [Path, ...]
    engine.case_study("cats-dogs", seeds=[0])                     -> Path of the report directory

Every option is the command's flag of the same name (`n_train` for `--n-train`), and takes what
the flag takes or the Python value of it (lists for comma-separated values, True for a switch);
None (the default) leaves the command's default. Options are checked by the command line's own
parser and checks, and every problem with the input or the environment raises
`engine.EngineError` whose message is the CLI's one-line message. Importing `engine` has no side
effects (nothing heavy is imported, nothing is written); each function imports what it needs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

from engine.errors import EngineError

if TYPE_CHECKING:
    import pandas

PathLike = Union[str, "os.PathLike[str]"]
Values = Union[str, float, int, Sequence[Union[str, float, int, None]], None]


@contextlib.contextmanager
def _one_error_type() -> Iterator[None]:
    """OSErrors from the environment (a full disk, a read-only path) as EngineErrors with the
    CLI's message; EngineErrors and KeyboardInterrupt pass unchanged."""
    try:
        yield
    except OSError as exc:
        from engine.cli import _one_line, _os_message
        raise EngineError(_one_line(_os_message(exc))) from None


def _argv(command: str, options: dict, positional: Sequence[str] = ()) -> list[str]:
    from engine import flags
    return [*map(str, positional), *flags.tokens(command, options)]


def _parse(command: str, argv: list[str]):
    from engine import flags
    return flags.parse(command, argv)


@dataclass(frozen=True)
class SweepResults:
    """What `engine.sweep` returns: the sweep root and its counts; the rows, the report and the
    status are read from `out` when asked for (so they include runs recorded since)."""
    out: Path
    total: int        # runs in the sweep
    done_before: int  # of those, stored before this call
    ran: int          # rows recorded by this call (copies included)
    dry_run: bool = False

    def table(self) -> "pandas.DataFrame":
        """Every stored run of `out`, as `engine.results(out)`."""
        return results(self.out)

    def report(self) -> list[Path]:
        return report(self.out)

    def status(self) -> dict:
        return status(self.out)


def sweep(pair: str | None = None, betas: Values = None, *, layers: Values = None,
          seeds: Values = None, arch: Values = None, modes: Values = None,
          baselines: Values = None, n_bob: Values = None, epochs: int | None = None,
          alice_epochs: int | None = None, optimizer: str | None = None,
          lr: float | None = None, batch_size: int | None = None, depth: int | None = None,
          width: int | None = None, n_train: int | None = None, n_test: int | None = None,
          device: str | None = None, executor: str | None = None, out: PathLike | None = None,
          config: PathLike | None = None, from_dir: PathLike | None = None,
          dry_run: bool = False, wait: bool = True, **options: Any) -> SweepResults:
    """Run (or resume) `engine sweep` and return a `SweepResults` handle.

    The arguments are `engine sweep`'s flags (see README "The experiment: engine sweep"), e.g.
    `betas=[0, 0.5, 1]` or `betas="0,0.5,1"`, `layers="all"`, `n_bob=[100, "all"]`; any other
    flag by its name in `options` (`block_shuffle=[1, None]`, `max_group=64`,
    `ray_address="auto"`, ...). `config` is a study file (`--config`), `from_dir` a stored
    sweep (`--from`); values given here override theirs. `dry_run=True` counts the runs and
    trains nothing; `wait=False` raises at once when another process holds `out`. Progress goes to
    stderr as on the command line."""
    values = dict(pair=pair, betas=betas, layers=layers, seeds=seeds, arch=arch, modes=modes,
                  baselines=baselines, n_bob=n_bob, epochs=epochs, alice_epochs=alice_epochs,
                  optimizer=optimizer, lr=lr, batch_size=batch_size, depth=depth, width=width,
                  n_train=n_train, n_test=n_test, device=device, executor=executor, out=out,
                  config=config, **{"from": from_dir}, dry_run=dry_run, no_wait=not wait,
                  **options)
    with _one_error_type():
        argv = _argv("sweep", values)
        from engine.sweep.config import resolve
        spec, args = resolve(_parse("sweep", argv), argv)
        from engine import paths
        from engine.sweep.driver import run_sweep
        counts = run_sweep(spec, args.out, dry_run=args.dry_run, wait=not args.no_wait)
        return SweepResults(paths.sweep_out(args.out), counts["total"], counts["done_before"],
                            counts["ran"], bool(args.dry_run))


def results(out: PathLike) -> "pandas.DataFrame":
    """Every stored run of the sweep (or case study) under `out`, one row each, with the columns
    README "Outputs" lists; the rows `engine results` reads. EngineError when there are none."""
    with _one_error_type():
        from engine.sweep.results import load
        return load(Path(out))


def report(out: PathLike) -> list[Path]:
    """`engine report`: write `out/report/` (PNG figures, summary.md, report.html); returns the
    paths written, report.html last."""
    with _one_error_type():
        _parse("report", [str(out)])
        from engine.sweep.report import write_report
        return write_report(Path(out))


def status(out: PathLike) -> dict:
    """`engine status --json` as a dict: runs_total, runs_done, runs_to_train, alices_done,
    running, runs_per_min, eta_s and more (README "Watching a sweep")."""
    with _one_error_type():
        from engine.run_status import status as _status
        return _status(Path(out))


def pretrain(data: PathLike, *, arch: str | None = None, epochs: int | None = None,
             optimizer: str | None = None, lr: float | None = None, seed: int | None = None,
             save_epochs: Values = None, out: PathLike | None = None, device: str | None = None,
             **options: Any) -> Path:
    """`engine pretrain`: train Alice on the dataset directory `data` (or reuse her); returns
    the path of her weights, `<out>/alice/<id>/model.safetensors`."""
    values = dict(data=data, arch=arch, epochs=epochs, optimizer=optimizer, lr=lr, seed=seed,
                  save_epochs=save_epochs, out=out, device=device, **options)
    with _one_error_type():
        return run_pretrain(_parse("pretrain", _argv("pretrain", values)))


def analyze(kind: str, out: PathLike, **options: Any) -> list[Path]:
    """`engine analyze KIND DIR`: one of cka, transferability, bound, barrier, criticality,
    attribution, select-source, with that command's flags as options (`beta=[0, 1]`,
    `max_samples=500`, ...); returns the files written (its PNG and its Parquet part)."""
    with _one_error_type():
        from engine import flags
        from engine.cli_args import ANALYSES
        if kind not in ANALYSES:
            raise EngineError(f"unknown analysis {kind!r}; choose one of: {', '.join(ANALYSES)}")
        argv = [kind, str(out), *flags.tokens(f"analyze {kind}", options)]
        return run_analyze(_parse("analyze", argv))


def case_study(study: str = "cats-dogs", **options: Any) -> Path:
    """`engine case-study STUDY`: run (or resume) the case study and write its report; returns
    the report directory (summary.md, report.html, figures, CSV tables). Options are the
    command's flags (`seeds=[0, 1]`, `n_bob=[100, "all"]`, `out=...`, `report_only=True`)."""
    with _one_error_type():
        from engine.studies.case_study import run_from_args
        return run_from_args(_parse("case-study", _argv("case-study", options, [study])))


def reproduce(*claims: str, **options: Any) -> Path:
    """`engine reproduce [CLAIM ...]`: train what the claims need (or resume), judge them and
    write the report; returns the path of `report.html` (beside it `verdicts.json`, one object
    per claim). Options are the command's flags (`scale="smoke"`, `seeds=5`, `out=...`,
    `report_only=True`); `engine.reproduce(list=True)` returns the listing as a string."""
    with _one_error_type():
        from engine.studies.claims.runner import listing
        from engine.studies.claims.runner import reproduce as run
        args = _parse("reproduce", _argv("reproduce", options, claims))
        if args.list:
            return listing(args.claims, scale=args.scale, seeds=args.seeds)
        if args.executor == "ray":
            from engine.sweep.spec import require_ray
            require_ray()
        return run(args.claims, scale=args.scale, seeds=args.seeds, out=args.out,
                   executor=args.executor, device=args.device, report_only=args.report_only)


# What the CLI's commands and these functions share ---------------------------------------------

def run_pretrain(args) -> Path:
    """`engine pretrain` from parsed flags; the path of Alice's weights."""
    from engine import paths
    from engine.data.manifest import read_manifest, verify_dataset
    from engine.locks import path_lock
    from engine.spec import AliceSpec
    from engine.sweep.parse import parse_ints
    from engine.train.alice import _check_save_epochs, pretrain as _pretrain
    from engine.train.models import ARCHS
    import sys
    data = Path(args.data)
    spec = AliceSpec(dataset=read_manifest(data)["key"], arch=args.arch, optimizer=args.optimizer,
                     epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     depth=args.depth, width=args.width)
    save = parse_ints(args.save_epochs, "save-epochs") if args.save_epochs else []
    if args.arch not in ARCHS:
        raise EngineError(f"--arch: unknown architecture {args.arch!r}; choose from: "
                          f"{', '.join(ARCHS)}")
    save = _check_save_epochs(save, args.epochs)
    verify_dataset(data)  # digests and label ranges, before anything reads it for training
    out = paths.sweep_out(args.out)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    alice_dir = paths.alice_dir(out, spec.id)
    from engine.cli import _mkdir
    _mkdir(alice_dir.parent)
    with path_lock(alice_dir, log=log):  # one trainer per Alice; a second waits, then reuses
        return _pretrain(data, spec, out, save, args.device, log=log)


def run_analyze(args) -> list[Path]:
    """`engine analyze` from parsed flags; the files written."""
    import math
    import sys
    from engine.analysis.analyze import Options, analyze as _analyze
    from engine.spec import BASELINES, TRANSFER_MODES
    from engine.sweep.parse import parse_floats, parse_ints, parse_names
    o = Options(max_samples=args.max_samples)
    if args.beta:
        o.betas = parse_floats(args.beta, "beta")
    if args.arch:
        o.archs = [a.strip() for a in args.arch.split(",")]
    if args.seed:
        o.seeds = parse_ints(args.seed, "seed")
    if args.n_bob:
        o.n_bobs = parse_ints(args.n_bob, "n-bob", minimum=1)
    if args.mode:
        o.modes = parse_names(args.mode, "mode", TRANSFER_MODES + BASELINES)
    for name in ("bound_mode", "steps", "points", "tolerance", "method", "target", "n", "epochs"):
        if hasattr(args, name):
            setattr(o, name, getattr(args, name))
    if hasattr(args, "alphas"):
        o.alphas = tuple(parse_floats(args.alphas, "alphas"))
        o.sigmas = tuple(parse_floats(args.sigmas, "sigmas"))
    if getattr(args, "predictor", None):
        from engine.analysis.depth.registry import PREDICTORS
        o.predictors = parse_names(args.predictor, "predictor", list(PREDICTORS))
    if o.max_samples < 1:
        raise EngineError("--max-samples must be at least 1")
    if hasattr(args, "alphas"):
        if not all(math.isfinite(a) and 0 <= a <= 1 for a in o.alphas):
            raise EngineError("--alphas must be numbers in [0, 1]")
        if not all(math.isfinite(x) and x >= 0 for x in o.sigmas):
            raise EngineError("--sigmas must be non-negative numbers")
    if o.betas is not None and not all(math.isfinite(b) and 0 <= b <= 1 for b in o.betas):
        raise EngineError("--beta must be numbers in [0, 1]")
    return _analyze(args.kind, Path(args.dir), o, log=lambda m: print(m, file=sys.stderr))


def build_data(pair: str, beta: float, *, seed: int = 0, n_train: int | None = None,
               n_test: int | None = None, data_root: PathLike | None = None,
               out: PathLike | None = None, force: bool = False,
               block_shuffle: int | None = None, **options: Any) -> Path:
    """`engine build-data`: build (or reuse) a correlated side-by-side dataset and return its
    directory (see engine.data.build). `block_shuffle`: B to shuffle each image's BxB blocks with
    one fixed permutation (1 = pixels); `fit="resize"`, `image_size=64` as the flags."""
    with _one_error_type():
        from engine.data.build import build_data as _build
        return _build(pair, beta, seed=seed, n_train=n_train, n_test=n_test, data_root=data_root,
                      out=out, force=force, block_shuffle=block_shuffle, **options)
