"""Command line: `engine <command> ...` (also `python -m engine`).

Every user error ends as one line on stderr and exit status 2, with no traceback: bad flags (checked
by argparse before any work, see engine.cli_args), EngineErrors, and OSErrors from the
environment (a full disk, a read-only or wrong-type path). A closed stdout ends the command quietly.
Anything else is a bug: one line too (exit 1), with the traceback when ENGINE_TRACEBACK=1.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.cli_args import build_parser
from engine.errors import EngineError


def _build_data(args) -> int:
    from engine.data.build import build_data
    path = build_data(args.pair, args.beta, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                      data_root=args.data_root, out=args.out, force=args.force, fit=args.fit,
                      image_size=args.image_size, block_shuffle=args.block_shuffle,
                      log=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0


def _inspect(args) -> int:
    from engine.data.inspect import inspect
    print(inspect(Path(args.dataset), Path(args.grid) if args.grid else None, split=args.split,
                  count=args.count))
    return 0


def _demo(args) -> int:
    from engine.demo import demo
    return demo(data_root=args.data_root, out=Path(args.out))


def _pretrain(args) -> int:
    from engine.api import run_pretrain
    print(run_pretrain(args))
    return 0


def _check_out(path) -> None:
    """EngineError (before any work) when `path`, or a directory above it, is not a directory."""
    if path is None:
        return
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise EngineError(f"{parent} is a file where a directory is needed; pass another --out")


def _mkdir(path: Path) -> None:
    _check_out(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from engine.atomic import os_error
        raise os_error(exc, "create", path) from None


def _sweep(args) -> int:
    from engine.sweep.config import resolve
    from engine.sweep.driver import run_sweep
    argv = args.argv[args.argv.index("sweep") + 1:]
    spec, args = resolve(args, argv)  # --config / --from, flags given here override
    run_sweep(spec, args.out, dry_run=args.dry_run, wait=not args.no_wait)
    return 0


def _results(args) -> int:
    from engine.sweep.results import export_csv, results_table
    print(results_table(Path(args.dir)))
    if args.csv:
        print(export_csv(Path(args.dir), Path(args.csv)), file=sys.stderr)
    return 0


def _manifold_sweep(args) -> int:
    from engine.studies.manifold_figures import format_best
    from engine.studies.manifold_sweep import parse_overlaps, run_manifold_sweep
    from engine.sweep.parse import parse_ints
    _check_out(args.out)
    result = run_manifold_sweep(
        parse_overlaps(args.overlaps), parse_ints(args.n_target, "n-target", minimum=1),
        parse_ints(args.seeds, "seeds"), vary=args.vary, d_latent=args.d_latent,
        n_input=args.n_input, target_latent=args.target_latent, n_classes=args.classes,
        nonlinearity=args.nonlinearity, n_source=args.n_source, n_test=args.n_test,
        epochs=args.epochs, min_steps=args.min_steps, alice_epochs=args.alice_epochs,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, depth=args.depth,
        width=args.width, device=args.device, out=args.out)
    print(format_best(result["best"]))
    for path in result["figures"]:
        print(path)
    return 0


def _report(args) -> int:
    from engine.sweep.report import write_report
    for path in write_report(Path(args.dir)):
        print(path)
    return 0


def _status(args) -> int:
    import json
    from engine.run_status import format_status, status
    s = status(Path(args.dir))
    print(json.dumps(s) if args.json else format_status(s))
    return 0


def _toy(args) -> int:
    from engine.studies.toy import parse_alphas, run_toy
    _check_out(args.out)
    print(run_toy(Path(args.out), k=args.k, n=args.n, seed=args.seed, alphas=parse_alphas(args.alphas),
                  lam=args.lam, hidden=args.hidden, length=args.length,
                  log=lambda m: print(m, file=sys.stderr)))
    return 0


def _analyze(args) -> int:
    from engine.api import run_analyze
    for path in run_analyze(args):
        print(path)
    return 0


def _case_study(args) -> int:
    from engine.studies.case_study import handle
    return handle(args)


def _reproduce(args) -> int:
    from engine.studies.claims.command import handle
    return handle(args)


COMMANDS = {"analyze": _analyze, "case-study": _case_study, "build-data": _build_data, "inspect": _inspect, "demo": _demo, "pretrain": _pretrain,
            "sweep": _sweep, "results": _results, "report": _report, "status": _status, "toy": _toy,
            "manifold-sweep": _manifold_sweep, "reproduce": _reproduce}


def _choose_depth(args) -> int:
    from engine.analysis.depth.recommend import handle
    return handle(args)


COMMANDS["choose-depth"] = _choose_depth


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_message(exc: OSError) -> str:
    import errno
    from engine.atomic import os_error
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if exc.filename is None:  # no path, so no free space of some other filesystem either
        return f"cannot use a file: {'the disk is full' if full else exc.strerror or exc}"
    action = "write" if full or exc.errno == errno.EROFS else "use"
    return str(os_error(exc, action, exc.filename))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line, status 2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    name = args.command + (f" {args.kind}" if getattr(args, "kind", None) else "")
    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        print(f"engine {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"engine {name}: interrupted; completed work is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `engine results DIR | head`): nothing more to say to it.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the environment: a full disk, a read-only or wrong-type path, ...
        print(f"engine {name}: error: {_one_line(_os_message(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("ENGINE_TRACEBACK"):
            raise
        print(f"engine {name}: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
              "(set ENGINE_TRACEBACK=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
