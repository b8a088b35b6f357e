"""setup.cfg lists packages by name (kernels/ and datasets/ are mapped into engine.*), so a new
sub-package left out of it would be missing from a regular, non-editable install."""
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_engine_subpackage_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {"engine", "engine.kernels", "engine.datasets"}
    on_disk |= {"engine." + p.parent.name for p in (ROOT / "engine").glob("*/__init__.py")}
    assert on_disk <= listed, f"add to setup.cfg [options] packages: {sorted(on_disk - listed)}"


def _resolves(dotted: str) -> bool:
    """Whether `dotted` (engine.a.b...) is a module, or an attribute of the longest module prefix."""
    import importlib
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_readme_names_only_what_exists():
    """Files, dotted names and the Python snippet's imports in the README resolve (they went
    stale once when modules moved into engine/data, engine/train...)."""
    import re
    text = (ROOT / "README.md").read_text()
    files = set(re.findall(r"`((?:engine|kernels|datasets|bench|tests)/[\w/.]+\.(?:py|sh|md))", text))
    assert files and [f for f in files if not (ROOT / f).is_file()] == []
    dotted = set(re.findall(r"`(engine(?:\.[A-Za-z_]\w*)+)", text))
    assert dotted and [d for d in dotted if not _resolves(d)] == []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith(("from engine", "import engine")):
                exec(line.split("#")[0], {})


def test_readme_documents_every_command_and_analysis():
    """Each sub-command and each `engine analyze` kind has its place in the README (four analysis
    sections were once lost in an unrelated edit)."""
    from engine.cli import COMMANDS
    from engine.cli_args import ANALYSES
    text = (ROOT / "README.md").read_text()
    missing = [f"engine {c}" for c in COMMANDS if f"engine {c}" not in text]
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    missing += [f"engine analyze {k}" for k in ANALYSES
                if not any(f"engine analyze {k} " in h for h in headings)]
    assert missing == []
