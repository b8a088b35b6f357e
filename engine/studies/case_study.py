"""`engine case-study cats-dogs`: does Bob's cats-vs-dogs task profit from a semantically related
Alice? (Mohamud & Brink 2025: Bob reuses Alice's pre-trained network effectively when his task and
hers are semantically correlated, and the best number of retrained layers follows that correlation.)

Bob's task: cat vs dog on the `cats_and_dogs_filtered/` photos (train 1000 + 1000, evaluated on
the 500 + 500 validation photos), at `image_size` (32 by default).
Alice's tasks, on CIFAR-10 (the full `cifar10` source when its files are under the data root, else
the offline `CIFAR10/cifar10_test.npz`, divided by a seeded 80/20 hold-out), graded by their
semantic relation to Bob's (`rank`: 4 = closest):
- `cifar-cat-dog` (4): the same two classes from another photo collection;
- `cifar-all` (3): all ten classes, a superset containing them;
- `cifar-animals` (2): bird, deer, frog, horse: related classes without cat and dog;
- `cifar-vehicles` (1): airplane, automobile, ship, truck: unrelated classes;
- `cifar-cat-dog-noise<p>`: the closest task with a fraction p of labels redrawn at random
  (engine.data.tasks), the label-noise dial on the first.

Each Alice pre-trains once per seed; Bob fine-tunes from every depth l = 1..L in `finetune` and
`reinit` mode and from scratch, per n_bob and seed, through the sweep machinery
(engine.sweep.driver.execute: store, resume, computed_by). Bob's epochs scale with n_bob so that
every run sees about `passes` training samples (at least `min_epochs` epochs), so a larger n_bob
means more data, not more compute. Everything lands under `<out>`: `datasets/`, `alice/`,
`results/` (the Parquet store), `study.json` (the plan: tasks, Alice IDs, run IDs) and `report/`
(engine.studies.case_study_report). Killing and re-running the command resumes.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from typing import TYPE_CHECKING

from engine import paths
from engine.atomic import write_json
from engine.errors import EngineError
from engine.spec import AliceSpec, BobSpec, n_layers

if TYPE_CHECKING:  # the data modules import numba: kept out of `engine --help`
    from engine.data.tasks import TaskSpec

STUDIES = ("cats-dogs",)
ARCHS = ("cnn", "resnet18")
IMAGE_SIZES = (32, 64)
CATS_DOGS_DIR = "cats_and_dogs_filtered"
CIFAR10_NPZ = "CIFAR10/cifar10_test.npz"

# Defaults, chosen so that the whole study fits 30 minutes on a 2-core CPU (see the README).
MODES = ("finetune", "reinit")  # Bob's transfer modes; run_case_study's `modes` may keep one
DEFAULTS = dict(arch="cnn", n_bobs=(100, 500, None), seeds=(0, 1), image_size=32, noise=(0.5,),
                alice_epochs=6, alice_optimizer="adam", passes=3000, min_epochs=2,
                optimizer="sgd", batch_size=64)


@dataclass(frozen=True)
class AliceTask:
    """One of Alice's tasks and its place on the relation scale."""
    task: "TaskSpec"
    relation: str            # in words
    rank: int | None         # graded relation to Bob's task (higher = closer); None: noise dial
    noise: float = 0.0

    @property
    def name(self) -> str:
        return self.task.name


def cifar_source(data_root=None, alice_source: str | None = None) -> tuple[str, tuple | None]:
    """(source, class names for it or None): `alice_source` if given, else the full CIFAR-10 when
    its batches are under the data root, else the offline test-split npz."""
    from engine.datasets.cifar import CLASSES as CIFAR10_CLASSES
    from engine.datasets.cifar import SUBDIR as CIFAR10_SUBDIR
    root = paths.data_root(data_root)
    if alice_source:
        if alice_source.startswith("npz:"):
            return alice_source, CIFAR10_CLASSES
        return alice_source, None
    if (root / CIFAR10_SUBDIR).is_dir():
        return "cifar10", None
    npz = root / CIFAR10_NPZ
    if npz.is_file():
        return f"npz:{npz}", CIFAR10_CLASSES
    raise EngineError(f"no CIFAR-10 for Alice under {root}: neither {CIFAR10_SUBDIR}/ nor "
                      f"{CIFAR10_NPZ}; pass --data-root or --alice-source")


def cats_dogs_tasks(*, data_root=None, image_size: int = 32, noise: Sequence[float] = (0.5,),
                    alice_source: str | None = None,
                    bob_source: str | None = None) -> tuple[TaskSpec, list[AliceTask]]:
    """Bob's task and Alice's graded tasks (see the module docstring)."""
    from engine.data.tasks import make_task
    from engine.datasets.cifar import CLASSES as CIFAR10_CLASSES
    root = paths.data_root(data_root)
    bob = make_task(bob_source or f"folder:{root / CATS_DOGS_DIR}", groups=[["cats"], ["dogs"]],
                    labels=["cat", "dog"], name="cats-dogs", image_size=image_size)
    src, names = cifar_source(data_root, alice_source)
    common = dict(image_size=image_size, source_classes=names)
    animals = ["bird", "deer", "frog", "horse"]
    vehicles = ["airplane", "automobile", "ship", "truck"]
    alices = [
        AliceTask(make_task(src, ["cat", "dog"], name="cifar-cat-dog", **common),
                  "same classes, other photos", 4),
        AliceTask(make_task(src, list(CIFAR10_CLASSES), name="cifar-all", **common),
                  "superset (all ten classes)", 3),
        AliceTask(make_task(src, animals, name="cifar-animals", **common),
                  "related classes without cat and dog", 2),
        AliceTask(make_task(src, vehicles, name="cifar-vehicles", **common),
                  "unrelated classes (vehicles)", 1),
    ]
    for p in dict.fromkeys(float(x) for x in noise):
        if not 0 < p <= 1:
            raise EngineError(f"--noise: {p:g} must be in (0, 1]")
        alices.append(AliceTask(make_task(src, ["cat", "dog"], name=f"cifar-cat-dog-noise{p:g}",
                                          noise=p, **common),
                                f"same classes, {p:.0%} of labels random", None, p))
    return bob, alices


def bob_epochs(n: int, passes: int, min_epochs: int) -> int:
    """Epochs for a run on n samples: about `passes` samples seen, at least `min_epochs`."""
    return max(int(min_epochs), math.ceil(passes / n))


def plan_runs(bob_key: str, bob_train: int, alices: dict[str, AliceTask], keys: dict[str, str], *,
              arch: str, n_bobs: Sequence[int | None], seeds: Sequence[int], alice_epochs: int,
              alice_optimizer: str, passes: int, min_epochs: int, optimizer: str,
              batch_size: int, modes: Sequence[str] = MODES
              ) -> tuple[list[BobSpec], list[AliceSpec], dict[str, dict]]:
    """(Bob's runs, Alices, {alice_id: facts}) for the study. `alices` by task name, `keys`: task
    name -> dataset key. Order: seed, n_bob, Alice task, depth, mode; scratch after each n_bob."""
    L = n_layers(arch)
    specs: list[BobSpec] = []
    alice_specs: dict[str, AliceSpec] = {}
    facts: dict[str, dict] = {}
    for seed in seeds:
        for name, at in alices.items():
            a = AliceSpec(dataset=keys[name], arch=arch, optimizer=alice_optimizer,
                          epochs=alice_epochs, batch_size=batch_size, seed=seed)
            alice_specs[a.id] = a
            facts[a.id] = {"task": name, "relation": at.relation, "rank": at.rank,
                           "noise": at.noise, "seed": seed, "dataset": keys[name]}
        for n in n_bobs:
            size = bob_train if n is None else n
            if size > bob_train:
                raise EngineError(f"--n-bob {n} exceeds the {bob_train} training photos of Bob's "
                                  f"task; use at most {bob_train} or 'all'")
            common = dict(dataset=bob_key, arch=arch, n_bob=n, seed=seed,
                          epochs=bob_epochs(size, passes, min_epochs), optimizer=optimizer,
                          batch_size=batch_size)
            for name in alices:
                a_id = next(i for i, f in facts.items() if f["task"] == name and f["seed"] == seed)
                specs += [BobSpec(alice_id=a_id, retrain_from=l, mode=m, **common)
                          for l in range(1, L + 1) for m in modes]
            specs.append(BobSpec(alice_id="", retrain_from=1, mode="scratch", **common))
    return specs, list(alice_specs.values()), facts


def run_case_study(study: str = "cats-dogs", *, out=None, arch: str = DEFAULTS["arch"],
                   n_bobs: Sequence[int | None] = DEFAULTS["n_bobs"],
                   seeds: Sequence[int] = DEFAULTS["seeds"],
                   image_size: int = DEFAULTS["image_size"],
                   noise: Sequence[float] = DEFAULTS["noise"],
                   alice_epochs: int = DEFAULTS["alice_epochs"],
                   alice_optimizer: str = DEFAULTS["alice_optimizer"],
                   passes: int = DEFAULTS["passes"], min_epochs: int = DEFAULTS["min_epochs"],
                   optimizer: str = DEFAULTS["optimizer"], batch_size: int = DEFAULTS["batch_size"],
                   device: str = "auto", executor: str = "batched", data_root=None,
                   alice_source: str | None = None, bob_source: str | None = None,
                   report_only: bool = False, stderr=None,
                   log: Callable[[str], None] | None = None,
                   alice_tasks: Sequence[str] | None = None,
                   modes: Sequence[str] = MODES) -> Path:
    """Run (or resume) the study and write its report; returns the report directory."""
    stderr = stderr or sys.stderr
    log = log or (lambda msg: print(msg, file=stderr, flush=True))
    if study not in STUDIES:
        raise EngineError(f"unknown case study {study!r}; choose one of: {', '.join(STUDIES)}")
    if arch not in ARCHS:
        raise EngineError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if image_size not in IMAGE_SIZES:
        raise EngineError(f"--image-size must be one of {', '.join(map(str, IMAGE_SIZES))}, "
                          f"got {image_size!r}")
    for name, value in (("passes", passes), ("min-epochs", min_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EngineError(f"--{name} must be a positive integer, got {value!r}")
    seeds, n_bobs = list(dict.fromkeys(seeds)), list(dict.fromkeys(n_bobs))
    if not seeds or not n_bobs:
        raise EngineError("the study needs at least one seed and one n_bob")
    out = Path(out) if out is not None else Path("out") / "case-study" / study
    from engine.studies.case_study_report import write_report
    if report_only:
        return write_report(out)

    from engine.data.tasks import build_task, check_same_shape
    t0 = time.perf_counter()
    bob, alices = cats_dogs_tasks(data_root=data_root, image_size=image_size, noise=noise,
                                  alice_source=alice_source, bob_source=bob_source)
    if alice_tasks is not None:  # a subset of Alice's tasks (engine reproduce sizes the study)
        unknown = set(alice_tasks) - {a.name for a in alices}
        if unknown or not alice_tasks:
            raise EngineError(f"unknown Alice task(s) {sorted(unknown)}; choose from "
                              f"{', '.join(a.name for a in alices)}")
        alices = [a for a in alices if a.name in set(alice_tasks)]
    if not modes or set(modes) - set(MODES):
        raise EngineError(f"modes must be some of {', '.join(MODES)}, got {list(modes)}")
    datasets = paths.sweep_datasets(out)
    bob_dir = build_task(bob, data_root=data_root, out=datasets, log=log)
    dirs = {bob_dir.name: bob_dir}
    keys = {}
    for at in alices:
        d = build_task(at.task, data_root=data_root, out=datasets, log=log)
        check_same_shape(d, bob_dir)
        dirs[d.name], keys[at.name] = d, d.name
    from engine.data.manifest import read_manifest
    bob_train = int(read_manifest(bob_dir)["spec"]["n_train"])
    log(f"datasets ready in {time.perf_counter() - t0:.0f} s")

    specs, alice_specs, facts = plan_runs(
        bob_dir.name, bob_train, {a.name: a for a in alices}, keys, arch=arch, n_bobs=n_bobs,
        seeds=seeds, alice_epochs=alice_epochs, alice_optimizer=alice_optimizer, passes=passes,
        min_epochs=min_epochs, optimizer=optimizer, batch_size=batch_size, modes=modes)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", {
        "study": study, "bob": {"task": bob.name, "dataset": bob_dir.name,
                                "classes": list(bob.labels)},
        "alices": facts,
        "tasks": {a.name: {"relation": a.relation, "rank": a.rank, "noise": a.noise,
                           "dataset": keys[a.name], "classes": list(a.task.labels),
                           "groups": [list(g) for g in a.task.groups]} for a in alices},
        "options": {"arch": arch, "n_bobs": ["all" if n is None else n for n in n_bobs],
                    "seeds": seeds, "image_size": image_size, "noise": list(noise),
                    "alice_epochs": alice_epochs, "alice_optimizer": alice_optimizer,
                    "passes": passes, "min_epochs": min_epochs, "optimizer": optimizer,
                    "batch_size": batch_size, "executor": executor,
                    **({"modes": list(modes)} if tuple(modes) != MODES else {})},
        "run_ids": [s.run_id for s in specs],
    })
    from engine.sweep.driver import execute
    counts = execute(out, specs, alice_specs, dirs, executor=executor, device=device, log=log)
    log(f"{counts['total']} runs ({counts['done_before']} done before, {counts['ran']} now) in "
        f"{time.perf_counter() - t0:.0f} s")
    return write_report(out)


# CLI (wired in engine/cli_args.py) ----------------------------------------------------------------

def add_parser(sub) -> None:
    """The `case-study` sub-command's arguments."""
    p = sub.add_parser("case-study", help="real-image case study: Alice on CIFAR-10 tasks of graded "
                                          "relation, Bob on cats vs dogs photos")
    p.add_argument("study", choices=STUDIES)
    p.add_argument("--out", default=None, help="study directory (default out/case-study/STUDY)")
    p.add_argument("--arch", default=DEFAULTS["arch"], choices=ARCHS)
    p.add_argument("--n-bob", default="100,500,all", help="Bob's training photos, comma-separated")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"], choices=IMAGE_SIZES)
    p.add_argument("--noise", default="0.5", help="label-noise levels of the cat/dog Alice")
    p.add_argument("--alice-epochs", type=int, default=DEFAULTS["alice_epochs"])
    p.add_argument("--passes", type=int, default=DEFAULTS["passes"],
                   help="training samples each Bob run sees (epochs = passes / n_bob)")
    p.add_argument("--min-epochs", type=int, default=DEFAULTS["min_epochs"])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--executor", default="batched", choices=("batched", "serial"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--alice-source", default=None,
                   help="CIFAR-10 source for Alice (default: cifar10 if present, else the npz)")
    p.add_argument("--report-only", action="store_true",
                   help="only (re)write the report from the stored results")


def handle(args) -> int:
    """Run the sub-command; prints the report directory as the last line of stdout."""
    report = run_from_args(args)
    print(f"report: {report / 'summary.md'}")
    print(report)
    return 0


def run_from_args(args) -> Path:
    """The sub-command from its parsed flags (the CLI's and engine.case_study's); the report
    directory."""
    from engine.sweep.parse import parse_floats, parse_ints, parse_n_bobs
    return run_case_study(
        args.study, out=args.out, arch=args.arch, n_bobs=parse_n_bobs(args.n_bob),
        seeds=parse_ints(args.seeds, "seeds"), image_size=args.image_size,
        noise=parse_floats(args.noise, "noise") if args.noise.strip().lower() != "none" else (),
        alice_epochs=args.alice_epochs, passes=args.passes, min_epochs=args.min_epochs,
        device=args.device, executor=args.executor, data_root=args.data_root,
        alice_source=args.alice_source, report_only=args.report_only)
