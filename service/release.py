"""Which version of a model serves: `models/<name>/release.json` names its champion (serves), at most
one challenger (shadowed, or answering a canary share of the traffic) and every decision's who, when
and why (the audit trail). Written whole (temporary file, then rename); no file: the newest
published version is champion, as before releases existed (docs/releases.md)."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service import bundle

RELEASE_FILE = bundle.RELEASE_FILE
LOCK_FILE = ".release.lock"
HISTORY_SHOWN = 5  # the last decisions shown by GET /models/{name} and `tabserve models`


class ReleaseError(ValueError):
    """A release file that cannot be read, or a decision that cannot be taken."""


@dataclass(frozen=True)
class Release:
    """One model name's release state."""

    champion: int
    challenger: int | None = None
    canary: float = 0.0  # the share of traffic (0 to 1) the challenger answers
    shadow: bool = False  # the challenger also scores every request off the request path
    previous: tuple[int, ...] = ()  # earlier champions, most recent last: what rollback restores
    history: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["previous"], doc["history"] = list(self.previous), list(self.history)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Release:
        """A release from its file's JSON; ReleaseError naming the field that is wrong."""
        if not isinstance(doc, dict):
            raise ReleaseError("not a JSON object")
        unknown = set(doc) - {"champion", "challenger", "canary", "shadow", "previous", "history"}
        if unknown:
            raise ReleaseError(f"unknown field(s) {sorted(unknown)}")
        champion = doc.get("champion")
        if not _is_version(champion):
            raise ReleaseError(f"champion must be a version number, not {champion!r}")
        challenger = doc.get("challenger")
        if challenger is not None and not _is_version(challenger):
            raise ReleaseError(f"challenger must be a version number or null, not {challenger!r}")
        canary = doc.get("canary", 0.0)
        if type(canary) not in (int, float) or not 0.0 <= canary < 1.0:
            raise ReleaseError(f"canary must be a share from 0 to below 1, not {canary!r}")
        if canary and challenger is None:
            raise ReleaseError("canary is set but there is no challenger to answer it")
        if challenger is not None and challenger == champion:
            raise ReleaseError(f"version {champion} cannot be both champion and challenger")
        shadow = doc.get("shadow", False)
        if type(shadow) is not bool:
            raise ReleaseError(f"shadow must be true or false, not {shadow!r}")
        previous, history = doc.get("previous", []), doc.get("history", [])
        if not isinstance(previous, list) or not all(_is_version(v) for v in previous):
            raise ReleaseError("previous must be a list of version numbers")
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ReleaseError("history must be a list of objects")
        return cls(int(champion), challenger, float(canary), shadow, tuple(previous), tuple(history))  # type: ignore[arg-type]

    def versions(self) -> dict[str, Any]:
        """Champion, challenger and canary share, for listings."""
        return {"champion": self.champion, "challenger": self.challenger, "canary": self.canary, "shadow": self.shadow}


def _is_version(value: Any) -> bool:
    return type(value) is int and value > 0


def path_of(root: Path, name: str) -> Path:
    return root / name / RELEASE_FILE


def read(root: Path, name: str) -> Release | None:
    """The name's release file; None when there is none (the newest version is champion)."""
    path = path_of(root, name)
    if path.exists() and not path.is_file():  # a FIFO's read blocked the event loop for good
        raise ReleaseError(f"{path} is not a regular file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror}") from None
    try:
        return Release.from_json(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: not valid JSON ({exc})") from None
    except ReleaseError as exc:
        raise ReleaseError(f"{path}: {exc}") from None


def current(root: Path, name: str, new: int | None = None) -> Release:
    """The release file's state, or the implicit one of a store without it: the newest version is
    champion (leaving out `new`, a version just published to be proposed, when it has an elder)."""
    found = read(root, name)
    if found is not None:
        return found
    published = bundle.versions(root, name)
    if new is not None and [v for v in published if v != new]:
        published = [v for v in published if v != new]
    if not published:
        raise ReleaseError(f"no model named {name!r} in {root}")
    return Release(champion=published[-1])


def resolve(root: Path, spec: str) -> bundle.BundleRef:
    """What a user names → its bundle: `name` (its champion, the version that serves), `name@version`,
    a bundle directory, or a model's directory (models/churn: its champion)."""
    path = Path(spec)
    if (path / bundle.MODEL_FILE).is_file():
        return bundle.BundleRef(path.parent.name, int(path.name) if bundle.is_version(path.name) else 0, path)
    name, _, wanted = spec.partition("@")
    found = bundle.versions(root, name)
    if not found and (in_folder := bundle.versions(path.parent, path.name)):  # a model's directory
        root, name, found = path.parent, path.name, in_folder
    if not found:
        raise bundle.BundleError(f"no model named {name!r} in {root}")
    given = bundle.version_given(wanted)
    if wanted and given is None:
        raise bundle.BundleError(f"{spec!r}: write name@version, such as {name}@{found[-1]}")
    version = given if given is not None else current(root, name).champion
    if version not in found:
        raise bundle.BundleError(f"model {name!r} has no version {version} (has {found})")
    return bundle.BundleRef.of(root, name, version)


def write(root: Path, name: str, release: Release) -> None:
    """Replace the file whole: a reader sees the old state or the new one, never half of either."""
    path = path_of(root, name)
    fd, tmp = tempfile.mkstemp(prefix=".release-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(release.to_json(), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One decision at a time per name (two trainings finishing together, a CLI and the admin API)."""
    (root / name).mkdir(parents=True, exist_ok=True)
    with open(root / name / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def who() -> str:
    """Who takes a decision: TABSERVE_USER, else the login name."""
    with contextlib.suppress(Exception):
        return os.environ.get("TABSERVE_USER") or getpass.getuser()
    return "unknown"


def decide(root: Path, name: str, action: str, version: int | None = None, *, canary: float | None = None,
           shadow: bool | None = None, why: str = "", by: str | None = None,
           over: int | None = None) -> Release:  # fmt: skip
    """Take one decision and record it: `challenger` (a new version is proposed), `promote` (it, or
    `version`, becomes champion; with `canary`, it answers that share instead; with `over`, only if
    that version is still champion), `rollback` (the previous champion is back), `shadow` (on or
    off). Raises ReleaseError for one that cannot be."""
    refuse_control_characters(why)
    with _locked(root, name):
        state = current(root, name, version if action == "challenger" else None)
        if over is not None and state.champion != over:  # the gate judged against a champion since replaced
            raise ReleaseError(f"v{state.champion} became champion after this version was compared with v{over}")
        published = bundle.versions(root, name)
        if version is not None and version not in published:
            raise ReleaseError(f"model {name!r} has no published version {version} (has {published})")
        if state.challenger is not None and state.challenger not in published:  # retired by hand: no challenger
            state = replace(state, challenger=None, canary=0.0, shadow=False)
        if action == "challenger":
            assert version is not None
            new = replace(state, challenger=version, canary=0.0) if version != state.champion else state
        elif action == "promote":
            new = _promote(state, name, version, canary)
        elif action == "rollback":
            new = _rollback(state, name, published)
        elif action == "shadow":
            if shadow and state.challenger is None:
                raise ReleaseError(f"{name} has no challenger to shadow (train one, or promote one with --canary)")
            new = replace(state, shadow=bool(shadow))
        else:
            raise ReleaseError(f"unknown decision {action!r}")
        # what will answer traffic: a broken bundle was accepted. Ending a canary changes no champion
        ending = action == "promote" and canary is None and new.champion == state.champion and state.canary > 0
        if action in ("promote", "rollback") and not ending:
            _check_loads(root, name, new.challenger if canary is not None else new.champion)
        if (action == "shadow" and shadow) or (action == "promote" and canary is not None):
            _check_contracts(root, name, new, canary=action == "promote")
        elif new.shadow and new.challenger is not None and new != state:
            try:  # a new pair the shadow cannot run on: it stops, and the decision's entry says so
                _check_contracts(root, name, new, canary=False)
            except ReleaseError:
                new = replace(new, shadow=False)
        if new.champion not in published:  # its folder moved away by hand
            raise ReleaseError(
                f"{name} version {new.champion} would be champion but is not published (has {published})"
            )
        # a proposed version that is champion at once (a name's first) is recorded as what it became
        recorded = "champion" if action == "challenger" and version == new.champion else action
        return _record(root, name, state, new, recorded, version, why, by)


def _check_loads(root: Path, name: str, version: int | None) -> None:
    """The version opens as the service opens it (its contract and its ONNX graph on this machine's
    CPU): rolled back to a damaged bundle, the service kept the version it rolled back from, and a
    restart served an older one."""
    from service.runtime import create_session

    if version is None:
        return
    ref = bundle.BundleRef.of(root, name, version)
    try:
        ref.preprocess  # noqa: B018 (read for its errors)
        create_session(ref.path / bundle.MODEL_FILE, "cpu")
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds for a damaged graph
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ReleaseError(f"{name} version {version} cannot be loaded ({why}): it would not serve") from None


def _check_contracts(root: Path, name: str, state: Release, canary: bool) -> None:
    """A canary answers the champion's requests, so it must read the same fields (V2 refused a field
    it dropped; /predict imputed one it added, without a word); a shadow scores the champion's
    encoded rows, so it must read no field they lack. Both were accepted and then failed."""
    from service.shadow import NotComparable, Recode

    assert state.challenger is not None
    try:
        champion, challenger = (
            bundle.BundleRef.of(root, name, v).preprocess for v in (state.champion, state.challenger)
        )
        if not canary:
            Recode(champion, challenger)
            return
    except NotComparable as exc:
        raise ReleaseError(f"{name} version {state.challenger} cannot shadow version {state.champion}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{name}: a bundle cannot be read: {exc}") from None
    added, dropped = (
        sorted(set(challenger.kinds) - set(champion.kinds)),
        sorted(set(champion.kinds) - set(challenger.kinds)),
    )
    if added or dropped:
        differ = "; ".join(
            f"{what} {', '.join(fields)}"
            for what, fields in (("it reads", added), ("it leaves out", dropped))
            if fields
        )
        raise ReleaseError(
            f"{name} version {state.challenger} cannot answer a canary of version {state.champion}'s requests "
            f"({differ}): promote it outright{'' if added else ', or shadow it'}"
        )


def retire(root: Path, spec: str, why: str = "", by: str | None = None) -> tuple[bundle.BundleRef, Release | None]:
    """`bundle.retire` under the release lock (a promote cannot slip in between the check and the
    rename): never the champion, nor a challenger answering a canary share; a challenger otherwise
    stops being one (its shadow ends). Recorded in the history where the model has a release file."""
    refuse_control_characters(why)
    name, _ = bundle.retiring(root, spec)  # an unknown name fails here, before the lock makes its folder
    with _locked(root, name):
        name, version = bundle.retiring(root, spec)  # again under the lock: what is published now
        state = read(root, name)
        if state is not None and version == state.champion:
            raise ReleaseError(
                f"{name} version {version} is the champion: `tabserve rollback {name}` (or promote another) first"
            )
        if state is not None and version == state.challenger and state.canary:
            raise ReleaseError(
                f"{name} version {version} answers {state.canary * 100:g} % of requests as a canary: "
                f"`tabserve promote {name}@{state.champion}` ends the canary first"
            )
        ref = bundle.retire(root, spec)
        if state is None:
            return ref, None
        new = replace(state, challenger=None, shadow=False) if version == state.challenger else state
        return ref, _record(root, name, state, new, "retire", version, why, by)


def _record(root: Path, name: str, state: Release, new: Release, action: str, version: int | None, why: str,
            by: str | None) -> Release:  # fmt: skip
    """Write `new` with the decision appended to the history (under the caller's lock)."""
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": by or who(),
        "action": action,
        "version": version,
        "champion": new.champion,
        "challenger": new.challenger,
        "canary": new.canary,
        "shadow": new.shadow,  # a `shadow` decision's entry says which way it went
        "why": why,
    }
    new = replace(new, history=(*state.history, entry))
    write(root, name, new)
    return new


def refuse_control_characters(why: str) -> None:
    """A reason is one line of text: a line break or an escape would forge or hide lines of the history."""
    if any(unicodedata.category(c) == "Cc" for c in why):
        raise ReleaseError(f"the reason holds control characters (line breaks, escapes): {why[:60]!r}; write one line")


def _promote(state: Release, name: str, version: int | None, canary: float | None) -> Release:
    version = version if version is not None else state.challenger
    if version is None:
        raise ReleaseError(f"{name} has no challenger: say which version to promote ({name}@<version>)")
    if canary is not None:
        if not 0.0 < canary < 1.0:
            raise ReleaseError(f"a canary share is above 0 and below 100 %, not {canary * 100:g} %")
        if version == state.champion:
            raise ReleaseError(f"version {version} is already the champion: a canary needs another version")
        return replace(state, challenger=version, canary=canary)
    if version == state.champion:
        return replace(state, canary=0.0)
    challenger = None if state.challenger == version else state.challenger
    return Release(version, challenger, 0.0, state.shadow and challenger is not None, (*state.previous, state.champion))


def _rollback(state: Release, name: str, published: list[int]) -> Release:
    earlier = [v for v in state.previous if v in published and v != state.champion]
    if not earlier:
        raise ReleaseError(f"{name} has no earlier champion still published to roll back to")
    back = earlier[-1]
    previous = state.previous[: len(state.previous) - 1 - state.previous[::-1].index(back)]
    challenger = None if state.challenger == back else state.challenger
    return Release(back, challenger, 0.0, state.shadow and challenger is not None, previous)
