"""The command line's flags as data: Python values turned into flag tokens, and tokens parsed by
the CLI's own parser (engine.cli_args) with its errors raised as one-line EngineErrors.

The Python API (engine.api) and study files (engine.sweep.config) both go through here, so a
value is checked exactly as on the command line and a bad one gets the same message:

    tokens("sweep", {"betas": [0, 0.5], "n-train": 512, "dry-run": True})
        -> ["--betas", "0,0.5", "--n-train", "512", "--dry-run"]
    parse("sweep", [...]) -> argparse.Namespace, as `engine sweep ...` sees it
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
from typing import Any, Mapping

from engine.errors import EngineError


def subparser(command: str, *, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The parser of `engine <command>` (a fresh one; "analyze cka" for a sub-command's); with
    `suppress_defaults`, parsing sets only the flags that were given."""
    from engine.cli_args import build_parser
    p = build_parser()
    for word in command.split():  # "analyze cka": a sub-command's sub-command
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if word not in sub.choices:
            raise EngineError(f"unknown command {command!r}")
        p = sub.choices[word]
    if suppress_defaults:
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


def options(command: str) -> dict[str, argparse.Action]:
    """{flag name without '--': its action} of `engine <command>`'s optional flags."""
    out = {}
    for action in subparser(command)._actions:
        for s in action.option_strings:
            if s.startswith("--") and s != "--help":
                out[s[2:]] = action
    return out


def is_switch(action: argparse.Action) -> bool:
    """A flag that takes no value (--dry-run)."""
    return action.nargs == 0


def value_text(name: str, value: Any) -> str:
    """One flag value as the command line spells it: numbers as numbers, lists comma-separated."""
    if isinstance(value, bool):
        raise EngineError(f"{name}: true/false is not a value of --{name}")
    if isinstance(value, (list, tuple)):
        if not value:
            raise EngineError(f"{name}: an empty list is not a value of --{name}")
        return ",".join("all" if v is None else value_text(name, v) for v in value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EngineError(f"{name}: {value} is not a finite number")
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise EngineError(f"{name}: a {type(value).__name__} is not a value of --{name}")


def tokens(command: str, values: Mapping[str, Any]) -> list[str]:
    """Flag tokens for `values` ({flag name: value}, '_' read as '-'; None = not given)."""
    known = options(command)
    out: list[str] = []
    for raw, value in values.items():
        name = raw.replace("_", "-")
        if name not in known:
            import difflib
            near = difflib.get_close_matches(name, list(known), n=1)
            raise EngineError(f"unknown option {raw!r} of engine {command}"
                              + (f" (did you mean {near[0]!r}?)" if near else ""))
        if value is None:
            continue
        action = known[name]
        if is_switch(action):
            if not isinstance(value, bool):
                raise EngineError(f"{name}: must be true or false, got {value!r}")
            out += [f"--{name}"] if value else []
        else:
            out += [f"--{name}", value_text(name, value)]
    return out


def parse(command: str, argv: list[str], *, suppress_defaults: bool = False,
          namespace: argparse.Namespace | None = None) -> argparse.Namespace:
    """`argv` (positionals and flags of `engine <command>`) parsed as the CLI parses them; a bad
    flag raises EngineError with the CLI's message."""
    p = subparser(command, suppress_defaults=suppress_defaults)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return p.parse_args(argv, namespace=namespace)
    except SystemExit:
        text = " ".join(err.getvalue().split())
        text = text.split(": error: ", 1)[-1]
        raise EngineError(text or f"bad arguments for engine {command}") from None
