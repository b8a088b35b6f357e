"""What every source adapter provides, and the error for files that are not there."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

from engine.datasets.split import Decoded
from engine.errors import EngineError


class Located(NamedTuple):
    files: list[Path]  # absolute; for a one-split source, every file of the source
    one_split: bool  # True: the source has no test split; the registry holds one out


class Source(Protocol):
    uses_image_size: bool  # True only where `image_size` changes the decoded pixels

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        """Files that `split` is decoded from; MissingFiles if any is absent."""
        ...

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        """Decode `part`: "train" or "test", or "all" for a one-split source."""
        ...


class MissingFiles(EngineError):
    """Source files are absent (as opposed to present but unreadable)."""


def missing_files(name: str, missing: list[str], root: Path, subdir: str) -> MissingFiles:
    return MissingFiles(
        f"{name}: missing {', '.join(missing)} in {root / subdir}; put the files there, or pass "
        f"--data-root or set ENGINE_DATA_ROOT to a data root that has {subdir}/ "
        f"(torchvision layout)"
    )


def corrupt(path: Path, why: str) -> EngineError:
    return EngineError(f"{path} is truncated or corrupt ({why}); delete it and download it again")
