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
