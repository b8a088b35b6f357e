"""`engine reproduce [CLAIM ...]`: the command line of engine.studies.claims.runner."""
from __future__ import annotations

import sys

EXECUTORS = ("batched", "serial", "ray")


def add_parser(sub) -> None:
    from engine.cli_args import COUNT
    from engine.studies.claims.scales import SCALES
    p = sub.add_parser("reproduce", help="test the papers' claims: train what they need, then "
                       "one verdict per claim with its interval (report.html, verdicts.json)")
    p.add_argument("claims", nargs="*", metavar="CLAIM", help="claim ids (default: all; see --list)")
    p.add_argument("--scale", default="small", choices=list(SCALES),
                   help="smoke (tests), small (a 2-core CPU, < 1 h), paper (a GPU or cluster)")
    p.add_argument("--seeds", type=COUNT, help="repeats per claim (default: the scale's)")
    p.add_argument("--out", help="directory (default: $ENGINE_REPRODUCE_OUT or ./out/reproduce)")
    p.add_argument("--executor", default="batched", choices=EXECUTORS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--report-only", action="store_true",
                   help="no training: judge and write the report from what DIR holds")
    p.add_argument("--list", action="store_true",
                   help="print each claim's paper, sentence, runs and estimated time, and exit")


def handle(args) -> int:
    from engine.studies.claims.runner import listing, reproduce
    if args.list:
        print(listing(args.claims, scale=args.scale, seeds=args.seeds))
        return 0
    if args.executor == "ray":
        from engine.sweep.spec import require_ray
        require_ray()
    page = reproduce(args.claims, scale=args.scale, seeds=args.seeds, out=args.out,
                     executor=args.executor, device=args.device, report_only=args.report_only)
    _print_table(page.parent)
    print(f"report: {page}")
    return 0


def _print_table(out) -> None:
    import json
    from engine import paths
    for r in json.loads(paths.verdicts_file(out).read_text()):
        effect = "n/a" if r["effect"] is None else f"{r['effect']:.3g}"
        ci = "" if r["ci_low"] is None else f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        print(f"{r['id']:32s} {r['verdict']:13s} effect {effect}{ci} ({r['seeds']} seeds)",
              file=sys.stdout)
