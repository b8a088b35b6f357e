"""bench/gpu_check.sh and its helper bench/gpu_check.py parse and list their phases (the dry run
itself, `DEVICE=cpu ... bash bench/gpu_check.sh`, takes minutes: not run here)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("ENV", "PROBE", "CONV", "GROUP", "RATE", "HEADS", "SERIAL", "ACC", "ALICE", "SUMMARY")


def test_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)


def test_helper_help_lists_every_phase():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--help"],
                         check=True, capture_output=True, text=True).stdout
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for phase in gpu_check.PHASES:
        assert phase in out
    assert set(gpu_check.TAGS.values()) | {"ACC", "RATE"} <= set(TAGS)
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    for phase in gpu_check.PHASES:  # the .sh runs every phase the helper has
        assert f"$G {phase}" in script
