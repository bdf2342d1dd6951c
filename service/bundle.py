"""The model store: `models/<name>/<version>/` bundles, published atomically."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service.atomic import temporary
from service.features import Preprocess

_T = TypeVar("_T")

MODEL_FILE = "model.onnx"
PREPROCESS_FILE = "preprocess.json"
RELEASE_FILE = "release.json"  # which version serves: service/release.py
METRICS_FILE = "metrics.json"
CARD_FILE = "model_card.md"
EXPLAIN_FILE = "explain.onnx"  # per-feature effects (optional: bundles from before it have none)
EXPLAIN_STATS_FILE = "explain.json"  # what reasons place values against
EVALUATION_FILE = (
    "evaluation.npz"  # the evaluation fit's outputs on the test rows: what the gate compares a refitted champion by
)
DRIFT_FILE = "drift.json"  # the training population's distributions, for live drift (optional)
REQUIRED_FILES = (MODEL_FILE, PREPROCESS_FILE, METRICS_FILE)
# what the service reads of a bundle: a change to one of them (a copy ending) loads it again; the
# card, its plots or an editor's swap file beside them do not
LOADED_FILES = frozenset({*REQUIRED_FILES, EXPLAIN_FILE, EXPLAIN_STATS_FILE, DRIFT_FILE})
DEFAULT_MODELS_DIR = "models"
RETIRED_SUFFIX = ".retired"  # `<version>.retired/`: kept for audit, never served, never renumbered
STAGING = ".staging-"  # `.staging-<host>@<pid>-<random>/`: a bundle being written, invisible to readers
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: `$` let a trailing newline through


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or unreadable."""


def models_dir(explicit: str | Path | None = None) -> Path:
    """The store root."""
    return Path(explicit or os.environ.get("TABSERVE_MODELS_DIR") or DEFAULT_MODELS_DIR)


def check_name(name: str) -> str:
    """Refuse a name that is not a safe directory name."""
    if not _NAME.match(name):
        raise BundleError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return name


@dataclass(frozen=True)
class BundleRef:
    """One published bundle on disk."""

    name: str
    version: int
    path: Path

    @classmethod
    def of(cls, root: Path, name: str, version: int) -> BundleRef:
        """A version's bundle in the store at `root` (`root/name/version`)."""
        return cls(name, version, root / name / str(version))

    @property
    def preprocess(self) -> Preprocess:
        return self._read(PREPROCESS_FILE, Preprocess.load)

    @property
    def metrics(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._read(METRICS_FILE, lambda path: json.loads(path.read_text()))
        if not isinstance(doc, dict):
            raise BundleError(f"{self.path / METRICS_FILE}: a JSON object expected, not {type(doc).__name__}")
        return doc

    def _read(self, name: str, read: Callable[[Path], _T]) -> _T:
        """A bundle file read by `read`; what is wrong with it names the file (`KeyError: 'features'` did not)."""
        path = self.path / name
        if path.exists() and not path.is_file():  # a FIFO's read blocked the loader, and every reload, for good
            raise BundleError(f"{path} is not a regular file")
        try:
            return read(path)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            raise BundleError(f"{path}: {type(exc).__name__}: {exc}") from None


def is_version(text: str) -> bool:
    """Whether `text` names a version as `publish` writes it: 1 to 18 ASCII digits, no leading zero. Other
    folders are not versions: `²` is a digit to Python that int() refuses, 20 digits passed no JSON
    encoder, and `007` was read as 7 at a path (`7/`) that does not exist."""
    return text.isascii() and text.isdigit() and len(text) <= 18 and not text.startswith("0")


def version_given(text: str) -> int | None:
    """A version as a user names it (`churn@07`, a URL's `/versions/7`): its number where it is 1 to 18
    ASCII digits, leading zeros allowed as in any number; else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def versions(root: Path, name: str, odd: list[Path] | None = None) -> list[int]:
    """Published versions of a model, ascending; folders that are no version (`007`, `v2`) are added
    to `odd` when given (hidden ones and retired versions are not: they are tabserve's own)."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    found = []
    for p in model_dir.iterdir():
        if is_version(p.name) and p.is_dir():
            found.append(int(p.name))
        elif odd is not None and not p.name.startswith(".") and not p.name.endswith(RETIRED_SUFFIX) and p.is_dir():
            odd.append(p)
    return sorted(found)


def retired_versions(root: Path, name: str) -> list[int]:
    """Retired versions of a model, ascending."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    stems = (p.name.removesuffix(RETIRED_SUFFIX) for p in model_dir.iterdir() if p.name.endswith(RETIRED_SUFFIX))
    return sorted(int(stem) for stem in stems if is_version(stem))


def retire(root: Path, spec: str) -> BundleRef:
    """Take `name` (its newest) or `name@version` out of service: renamed `<version>.retired`, the
    number is never reused (docs/service.md#rolling-back)."""
    name, version = retiring(root, spec)
    source = root / name / str(version)
    target = source.with_name(f"{version}{RETIRED_SUFFIX}")
    os.rename(source, target)
    return BundleRef(name, version, target)


def retiring(root: Path, spec: str) -> tuple[str, int]:
    """The name and version `retire` would take out (BundleError: none, or the only one left)."""
    name, _, wanted = spec.partition("@")
    found = versions(root, name)
    if not found:
        raise BundleError(f"no model named {name!r} in {root}")
    if not wanted:
        version = found[-1]
    elif version_given(wanted) in found:
        version = int(wanted)
    else:
        raise BundleError(f"model {name!r} has no published version {wanted!r} (has {found})")
    if len(found) == 1:
        raise BundleError(f"{name} version {version} is its only published version: nothing would be left to serve")
    return name, version


def iter_bundles(root: Path, odd: list[Path] | None = None) -> Iterator[BundleRef]:
    """Every published bundle, by name then version; folders that are no model (`My Model`) or no
    version are added to `odd` when given."""
    if not root.is_dir():
        return
    folders = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    for model_dir in folders:
        if not _NAME.match(model_dir.name):
            if odd is not None:
                odd.append(model_dir)
            continue
        for version in versions(root, model_dir.name, odd):
            yield BundleRef.of(root, model_dir.name, version)


def publish(root: Path, name: str, write: Callable[[Path], None]) -> BundleRef:
    """Write a bundle into a hidden staging directory, then rename it into place as the next version
    (the staging directories of dead publishers are removed first: service/atomic.py)."""
    model_dir = root / check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    with temporary(model_dir, STAGING) as staging:  # removed if anything fails
        staging.mkdir(mode=0o700)
        write(staging)
        missing = [f for f in REQUIRED_FILES if not (staging / f).is_file()]
        if missing:
            raise BundleError(f"bundle is missing {', '.join(missing)}")
        staging.chmod(0o755)
        return _rename_into_place(model_dir, name, staging)


def _rename_into_place(model_dir: Path, name: str, staging: Path) -> BundleRef:
    # rename(2) onto an existing non-empty directory fails, so two concurrent publishers
    # cannot both take the same version: the loser retries with the next number.
    while True:
        taken = [*versions(model_dir.parent, name), *retired_versions(model_dir.parent, name), *_recorded(model_dir)]
        version = max([0, *taken]) + 1
        target = model_dir / str(version)
        try:
            os.rename(staging, target)
        except OSError:
            if target.exists():
                continue
            raise
        return BundleRef(name, version, target)


def _recorded(model_dir: Path) -> list[int]:
    """Versions the release file names (its state and history): a number deleted by hand is not
    given again, as a service still holding that version would serve the old model under it."""
    try:
        doc = json.loads((model_dir / RELEASE_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    entries = [doc, *(h for h in doc.get("history", []) if isinstance(h, dict))]
    named = [e.get(k) for e in entries for k in ("champion", "challenger", "version")]
    named += doc.get("previous", []) if isinstance(doc.get("previous"), list) else []
    return [v for v in named if type(v) is int and v > 0]
