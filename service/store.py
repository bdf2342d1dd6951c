"""Loaded models: every bundle in the store, newest version current, hot reload without a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service import bundle, release
from service.batching import AdaptiveBatcher, NotFinite
from service.drift import Drift
from service.errors import InputError
from service.explain import Effects, Explainer
from service.features import Encoded, Preprocess
from service.protocols import codecs_for
from service.protocols.base import Codec
from service.release import Release, ReleaseError
from service.runtime import active_provider, create_session
from service.settings import Settings
from service.shadow import NotComparable, Shadow
from service.telemetry import Telemetry

log = logging.getLogger("tabserve.store")


# (model, num, cat, out, [(rows, note)] per request) of each batch a model answered (its outputs, not effects)
BatchObserver = Callable[["LoadedModel", np.ndarray, np.ndarray, np.ndarray, list[tuple[int, Any]]], None]


class ModelNotFound(LookupError):
    """No loaded model answers to that name (or version)."""


class NoExplainer(LookupError):
    """Reasons were asked of a bundle that has no explanation graph."""


@dataclass
class LoadedModel:
    """One bundle in memory: its contract, its ORT session (provider read back) and its batcher."""

    ref: bundle.BundleRef
    pre: Preprocess
    metrics: dict[str, Any]
    session: ort.InferenceSession
    provider: str
    batcher: AdaptiveBatcher
    codecs: dict[str, Codec]  # protocol name → its codec for this model
    explainer: Explainer | None = None  # None: a bundle from before reason codes
    explain_batcher: AdaptiveBatcher | None = None  # model and explain graphs together, apart from plain requests
    drift: Drift | None = None  # the live drift window (None: a bundle from before drift.json)
    loaded_at: float = field(default_factory=time.time)
    files: tuple[tuple[str, int, int], ...] = ()  # the bundle's files as loaded (`files_of`)
    # (field, kind) → count of a scored request's input warnings, to the metrics
    report_warnings: Callable[[dict[tuple[str, str], int]], None] = lambda tally: None
    score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # outside the batcher (the shadow)

    @property
    def name(self) -> str:
        """Model name."""
        return self.ref.name

    async def infer(self, enc: Encoded, timeout: float | None = None, note: Any = None) -> np.ndarray:
        """Model outputs for encoded rows, through the batcher (which hands them, with `note`, to the
        store's observer once answered); their input warnings go to the metrics."""
        try:
            out = await self.batcher.predict(enc.num, enc.cat, timeout, note)
        except NotFinite as exc:
            raise self._too_far(enc, exc, "score") from None
        if enc.tally:
            self.report_warnings(enc.tally)
        return out

    async def explain(self, enc: Encoded, timeout: float | None = None, note: Any = None) -> tuple[np.ndarray, Effects]:
        """Model outputs and each feature's effect, through the explaining batcher (which hands the
        outputs, with `note`, to the store's observer once answered)."""
        if self.explainer is None or self.explain_batcher is None:
            raise NoExplainer(f"{self.name} version {self.version} has no explain.onnx: retrain it for reason codes")
        try:
            both = await self.explain_batcher.predict(enc.num, enc.cat, timeout, note)
        except NotFinite as exc:  # scored without reasons, it may be a number: say which failed
            raise self._too_far(enc, exc, "explain") from None
        if enc.tally:
            self.report_warnings(enc.tally)
        n_out, n_feat = self.pre.n_outputs, len(self.pre.features)
        effects = both[:, n_out : n_out + n_feat]
        score, baseline, target = (both[:, n_out + n_feat + i] for i in range(3))
        return both[:, :n_out], Effects(effects, score, baseline, target.astype(np.int64))

    def _too_far(self, enc: Encoded, exc: NotFinite, to: str) -> InputError:
        """The first record that could not be scored (or explained), and the field that took it there."""
        row = int(exc.rows[0])
        field, why = self.pre.farthest(enc.num[row], to)
        message = f"record {row}, {why}" if to == "score" else f"record {row} could not be explained: {why}"
        return InputError("invalid", message, [{"record": row, "field": field, "message": why}])

    def close(self) -> None:
        """No new batches; in-flight requests finish on the sessions they started on."""
        self.batcher.close()
        if self.explain_batcher is not None:
            self.explain_batcher.close()

    @property
    def version(self) -> int:
        """Bundle version."""
        return self.ref.version


def _check_io(session: ort.InferenceSession, pre: Preprocess) -> None:
    names = {i.name: i for i in session.get_inputs()}
    if set(names) != {"num", "cat"}:
        raise bundle.BundleError(f"model.onnx inputs are {sorted(names)}, expected num and cat")
    widths = (names["num"].shape[1], names["cat"].shape[1])
    if widths != (len(pre.numeric), len(pre.categorical)):
        raise bundle.BundleError(f"model.onnx input widths {widths} disagree with preprocess.json")


def load_model(
    ref: bundle.BundleRef, settings: Settings, telemetry: Telemetry, observer: BatchObserver | None = None
) -> LoadedModel:
    """Read, open and warm up a bundle; raises on anything broken (the caller keeps the old one)."""
    files = files_of(ref.path)  # before reading: a copy that goes on meanwhile is loaded again
    odd = sorted(p.name for p in ref.path.iterdir() if p.name in bundle.LOADED_FILES and not p.is_file())
    if odd:  # a FIFO's read blocked the loader, holding the store's lock: no reload ever again
        raise bundle.BundleError(f"{ref.path / odd[0]} is not a regular file")
    pre, metrics = ref.preprocess, ref.metrics
    session = create_session(ref.path / bundle.MODEL_FILE, settings.device, settings.threads)
    _check_io(session, pre)

    def run(num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"num": num, "cat": cat})[0]
        return out

    for rows in (1, min(64, settings.max_batch_size)):  # warm-up: first calls allocate
        out = run(
            np.full((rows, len(pre.numeric)), np.nan, np.float32),
            np.zeros((rows, len(pre.categorical)), np.int64),
        )
        if out.shape != (rows, pre.n_outputs) or not np.all(np.isfinite(out)):
            raise bundle.BundleError(f"warm-up output {out.shape} is not {(rows, pre.n_outputs)} finite values")

    drift = load_drift(ref, pre, settings)

    def batcher(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], observed: bool = False) -> AdaptiveBatcher:
        def answered(num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Any]]) -> None:
            # the rows answered: a request refused (outputs not numbers) or too late is no traffic served
            if drift is not None:
                drift.update(num, cat, out[:, : pre.n_outputs])  # an explanation's columns follow the outputs
            if observed and observer is not None:
                observer(model, num, cat, out[:, : pre.n_outputs], notes)

        return AdaptiveBatcher(
            fn,
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            max_queue=settings.max_queue,
            enabled=settings.batching,
            on_loop=settings.inference == "loop",
            on_batch=lambda rows, secs: telemetry.batch(ref.name, rows, secs, ref.version),
            on_answered=answered if drift is not None or (observed and observer is not None) else None,
        )

    explainer = load_explainer(ref, pre, settings)
    codecs = codecs_for(pre, settings.max_records, explainer)
    model = LoadedModel(ref, pre, metrics, session, active_provider(session), batcher(run, True), codecs, explainer)
    model.drift, model.files = drift, files
    if explainer is not None:

        def run_both(num: np.ndarray, cat: np.ndarray) -> np.ndarray:
            found = explainer.run(num, cat)
            # effects that do not add up are no answer: not numbers, so the batcher refuses their rows
            found.effects[explainer.unexplained(found)] = np.nan
            extra = [found.score[:, None], found.baseline[:, None], np.asarray(found.target, np.float32)[:, None]]
            parts = [run(num, cat), found.effects, *extra]
            return np.concatenate(parts, axis=1)

        explainer.run(np.zeros((1, len(pre.numeric)), np.float32), np.zeros((1, len(pre.categorical)), np.int64))
        model.explain_batcher = batcher(run_both, True)  # logged and shadowed as plain requests are
    model.report_warnings = lambda tally: telemetry.warnings(ref.name, tally)
    model.score = run
    return model


def load_drift(ref: bundle.BundleRef, pre: Preprocess, settings: Settings) -> Drift | None:
    """The live drift window, or None for a bundle from before drift.json."""
    path = ref.path / bundle.DRIFT_FILE
    return Drift(pre, json.loads(path.read_text()), settings.monitor_window) if path.is_file() else None


def load_explainer(ref: bundle.BundleRef, pre: Preprocess, settings: Settings) -> Explainer | None:
    """The bundle's explanation graph and statistics, or None for a bundle from before them."""
    path, stats_path = ref.path / bundle.EXPLAIN_FILE, ref.path / bundle.EXPLAIN_STATS_FILE
    if not path.is_file():
        return None
    if not stats_path.is_file():  # reasons need both; predictions need neither
        log.warning(
            "%s version %d: %s without %s, so no reason codes", ref.name, ref.version, path.name, stats_path.name
        )
        return None
    session = create_session(path, settings.device, settings.threads)
    _check_io(session, pre)
    stats = json.loads(stats_path.read_text())
    return Explainer(pre, session, stats)


@dataclass(frozen=True)
class Refusal:
    """A bundle version that could not be loaded, and the state of its files then: it is tried
    again once they change (a bundle copied in by hand is refused until the copy is complete)."""

    message: str
    files: tuple[tuple[str, int, int], ...]


def files_of(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each file the service reads in a bundle directory."""
    try:
        found = (p for p in path.iterdir() if p.name in bundle.LOADED_FILES)
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in found for st in [p.stat()]))
    except OSError:
        return ()


@dataclass
class ReloadReport:
    """What one scan of the store did."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """For POST /admin/reload."""
        return {"loaded": self.loaded, "failed": self.failed}


class ModelStore:
    """Per model name the champion that serves (its release file's, else the newest version) and
    its challenger; new versions swap in atomically, broken ones (bundles or release files) are refused."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings, self.telemetry = settings, telemetry
        self.current: dict[str, LoadedModel] = {}  # the champions
        self.challengers: dict[str, LoadedModel] = {}
        self.canary: dict[str, float] = {}  # name → the share of traffic its challenger answers (only when > 0)
        self.shadows: dict[str, Shadow] = {}
        self.releases: dict[str, Release] = {}  # the last good release file per name
        self.release_errors: dict[str, str] = {}  # a release file refused, and why
        self.published: set[str] = set()  # every name with a published version, loaded or not
        self._scanned: set[str] = set()
        self._files: dict[tuple[str, int], tuple[tuple[str, int, int], ...]] = {}  # files_of, per refresh
        self._odd: set[Path] = set()  # folders in the store that are no model or version, said once
        self._gone: set[str] = set()  # names serving whose folder left the store, said once
        self._release_seen: dict[str, tuple[int, int] | None] = {}
        self._unservable: dict[str, int] = {}  # a release file's champion that cannot be loaded (said once)
        self._no_challenger: dict[str, int] = {}  # a release file's challenger not in the store (said once)
        # the default model (no --default-model), pinned at the first read that finds a name: clients of
        # /predict keep their model when another name that sorts first is published
        self._default: str | None = None
        self._not_default: set[str] = set()  # names sorting before the pinned default, said once
        self.older: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()  # least recently used first
        self.failed: dict[tuple[str, int], Refusal] = {}
        self.ready = False
        self.refreshed = False  # the store has been read once: not ready then means nothing to serve
        self.observer: BatchObserver | None = None  # set before the first load (DataPlane)
        self._lock = asyncio.Lock()
        self._loading: dict[tuple[str, int], asyncio.Future[LoadedModel]] = {}

    def get(self, name: str | None = None) -> LoadedModel:
        """The current version of `name` (None: the default model)."""
        if not self.refreshed and (not self.current or (name or self.default_name) not in self.current):
            # the first read of the store is under way (a worker restarted beside others that serve
            # takes connections now): "holds no servable bundle" or "no model named" was false
            raise ModelNotFound(
                "no model is loaded yet: the store is still being read (the service or this worker just started): retry in a moment"
            )
        if not self.current:
            where = self.settings.models_dir
            raise ModelNotFound(
                f"no model is loaded yet: {where} holds no servable bundle (publish one with tabserve train)"
            )
        name = name or self.default_name
        model = self.current.get(name) if name else None
        if model is None and name in self.published:
            why = self.release_errors.get(name) or next(
                (r.message for (n, _), r in sorted(self.failed.items()) if n == name), "no version of it loads"
            )
            raise ModelNotFound(f"model {name!r} is in the store but not served: {why}")
        if model is None:
            raise ModelNotFound(f"no model named {name!r} (serving: {', '.join(sorted(self.current))})")
        return model

    async def get_version(self, name: str | None, version: int | str | None) -> LoadedModel:
        """A given version of `name` (None: the current one; text: a path segment that names none,
        see version_in_path). Any other published version (older, or newer than a rolled-back
        champion) is loaded on first use, once however many requests ask at the same time, and the
        `older_versions` most recently used are kept."""
        current = self.get(name)
        if isinstance(version, str):
            found = self.versions(current.name)
            shown = version if len(version) <= 40 else version[:40] + "…"
            raise ModelNotFound(f"model {current.name!r} has no version {shown!r}: versions are numbers (has {found})")
        if version is None or version == current.version:
            return current
        challenger = self.challengers.get(current.name)
        if challenger is not None and challenger.version == version:
            return challenger
        key = (current.name, version)
        model = self.older.get(key)
        if model is not None:
            self.older.move_to_end(key)
            return model
        found = self.versions(current.name)
        if version not in found:
            raise ModelNotFound(self._no_version(current.name, version, found))
        if not self.settings.older_versions:
            raise ModelNotFound(
                f"{current.name} version {version} is in the store but not loaded: this service loads only its "
                f"champion ({current.version}) and challenger (older_versions is 0)"
            )
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load_older(key))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    def _no_version(self, name: str, version: int, found: list[int]) -> str:
        """Why a version is not addressable: retired (kept, never served) or never published."""
        if version in bundle.retired_versions(self.settings.models_dir, name):
            return f"{name} version {version} is retired (kept for audit, never served; has {found})"
        return f"model {name!r} has no version {version} (has {found})"

    async def _load_older(self, key: tuple[str, int]) -> LoadedModel:
        """Load an older version from inside the store (never a path a client could name)."""
        name, version = key
        ref = bundle.BundleRef.of(self.settings.models_dir, name, version)
        refused, files = self.failed.get(key), files_of(ref.path)
        if refused is None or refused.files != files:
            try:
                model = await asyncio.to_thread(load_model, ref, self.settings, self.telemetry, self.observer)
            except Exception as exc:  # noqa: BLE001 - a broken old bundle is just not available
                self._refuse(ref, exc, ReloadReport(), files)
            else:
                self.telemetry.reloads.labels("loaded").inc()
                self.failed.pop(key, None)
                self.older[key] = model
                while len(self.older) > self.settings.older_versions:
                    self.older.popitem(last=False)[1].close()
                return model
        # the reason is in the server log and /models; OS error text is not for clients
        raise ModelNotFound(f"{name} version {version} cannot be loaded (see the server log)")

    def preprocess_of(self, name: str, version: int) -> Preprocess | None:
        """A version's contract (threshold, labels) for the metrics of what it served: loaded, else
        read from its bundle, retired or not; None when it is gone from the store."""
        model = self._in_memory(name, version)
        if model is not None:
            return model.pre
        for folder in (str(version), f"{version}{bundle.RETIRED_SUFFIX}"):
            path = self.settings.models_dir / name / folder / bundle.PREPROCESS_FILE
            try:
                return Preprocess.load(path)
            except (OSError, ValueError):
                continue
        return None

    def _in_memory(self, name: str, version: int) -> LoadedModel | None:
        """The version if loaded: champion, challenger or an older one."""
        for model in (self.current.get(name), self.challengers.get(name), self.older.get((name, version))):
            if model is not None and model.version == version:
                return model
        return None

    def refused(self) -> dict[str, str]:
        """Versions in the store that could not be loaded, and release files refused (`churn/release.json`:
        its model serves its last good state, or nothing), and why."""
        versions = {f"{name}@{version}": r.message for (name, version), r in sorted(self.failed.items())}
        return versions | {f"{name}/{bundle.RELEASE_FILE}": why for name, why in sorted(self.release_errors.items())}

    def versions(self, name: str) -> list[int]:
        """Every version of `name` in the store directory."""
        return bundle.versions(self.settings.models_dir, name)

    @property
    def default_name(self) -> str | None:
        """settings.default_model, else the one pinned (`_pin_default`), else the first by name."""
        if self.settings.default_model:
            return self.settings.default_model
        if self._default is not None:
            return self._default
        names = self._names
        return min(names) if names else None

    @property
    def _names(self) -> set[str]:
        """Every name in the store, not only those loaded: with churn unservable (a broken release
        file), /predict went to the next name's model, which scored churn's records."""
        return self.published | self._scanned | set(self.current)

    def _pin_default(self) -> None:
        """Pin the first name by name once the store has one; a name published later that sorts
        before it is said once and does not take its place. A pinned name that left the store (never
        served, or every version retired) gives way to the next, said once."""
        if self.settings.default_model:
            return
        names = self._names
        if self._default is not None and self._default not in names:
            log.warning("%s, the default model, left the store: /predict and /invocations answer with %s",
                        self._default, min(names) if names else "no model")  # fmt: skip
            self._default = None
        if self._default is None:
            if names:
                self._default = min(names)
                if len(names) > 1:
                    log.info("POST /predict and /invocations answer with %s, the first model by name "
                             "(--default-model chooses another)", self._default)  # fmt: skip
            return
        for name in sorted(n for n in names - self._not_default if n < self._default):
            log.warning("%s sorts before %s, the default model: /predict and /invocations stay with %s "
                        "until the service restarts (--default-model chooses)", name, self._default, self._default)  # fmt: skip
            self._not_default.add(name)

    async def refresh(self) -> ReloadReport:
        """Serve each name's champion and hold its challenger, loading what is not loaded; each
        swaps in once it is warm."""
        async with self._lock:
            report = ReloadReport()
            self._files = {}
            published = self._scan()
            plan = self._plan(published)
            while plan:  # a version refused: its name planned again from the same scan, not a poll later
                before = set(report.failed)  # (the next newest may serve: each broken one cost a poll of 503s)
                await self._apply(plan, report)
                again = {key.rpartition("@")[0] for key in report.failed if key not in before}
                plan = {name: p for name, p in self._plan(published).items() if name in again} if again else {}
            self.ready, self.refreshed = bool(self.current), True
            self.published = self._scanned  # once tried: a name being loaded the first time is not refused
            for name in set(self.current) - self._scanned - self._gone:  # it serves on, as a broken bundle's would
                log.warning("%s: its folder left %s; still serving version %d, as loaded",
                            name, self.settings.models_dir, self.current[name].version)  # fmt: skip
            self._gone = set(self.current) - self._scanned
            self._pin_default()
            return report

    async def _apply(
        self, plan: dict[str, tuple[bundle.BundleRef | None, bundle.BundleRef | None]], report: ReloadReport
    ) -> None:
        """Load what `plan` says each name should serve and hold, each swapped in once warm."""
        for name, (champion, challenger) in plan.items():
            current = self.current.get(name)
            if champion is not None and self._due(current, champion):
                model = await self._loaded(champion, report)
                if model is not None:
                    self._swap(model)
                    report.loaded.append(f"{name}@{model.version}")
            held = self.challengers.get(name)
            if self._due(held, challenger) if challenger is not None else held is not None:
                model = await self._loaded(challenger, report) if challenger is not None else None
                if model is not None or challenger is None:
                    self._hold_challenger(name, model)
            self._arrange(name)

    def _due(self, model: LoadedModel | None, ref: bundle.BundleRef) -> bool:
        """Whether `ref` is to be loaded: `model` is none or another version, or its files changed since
        it loaded and were not refused as they now are. A bundle copied in by hand can be loaded before
        its copy ends (explain.onnx, drift.json still to come): it is loaded again once they arrive."""
        if model is None or model.version != ref.version:
            return True
        files = files_of(ref.path)
        refused = self.failed.get((ref.name, ref.version))
        return model.files != files and (refused is None or refused.files != files)

    async def _loaded(self, ref: bundle.BundleRef, report: ReloadReport) -> LoadedModel | None:
        """The bundle's model: one already loaded, else loaded now (None: refused)."""
        model = self._in_memory(ref.name, ref.version)
        if model is not None and model.files == files_of(ref.path):
            # champion or challenger now: the LRU must not close it when it evicts the entry
            self.older.pop((ref.name, ref.version), None)
            return model
        files = files_of(ref.path)  # before loading: a copy that ends meanwhile is tried again
        try:
            model = await asyncio.to_thread(load_model, ref, self.settings, self.telemetry, self.observer)
        except Exception as exc:  # noqa: BLE001 - any broken bundle is refused, never fatal
            self._refuse(ref, exc, report, files)
            return None
        self.telemetry.reloads.labels("loaded").inc()  # champion or challenger: a load, not a swap
        return model

    def _scan(self) -> dict[tuple[str, int], bundle.BundleRef]:
        """The store's bundles by (name, version); what left it is forgotten."""
        odd: list[Path] = []
        published = {(ref.name, ref.version): ref for ref in bundle.iter_bundles(self.settings.models_dir, odd)}
        for path in set(odd) - self._odd:  # once each: a folder copied in under a name nothing reads
            what = "model name" if path.parent == self.settings.models_dir else "version (1 to 18 digits, no leading 0)"
            log.warning("%s is no %s: left alone", path, what)
        self._odd = set(odd)
        self._scanned = {name for name, _ in published}
        for key in [k for k in self.failed if k not in published]:  # gone from the store: nothing to report
            del self.failed[key]
        for key in [k for k in self.older if k not in published]:  # retired (or removed): no longer answers
            self.older.pop(key).close()
        return published

    def _files_now(self, ref: bundle.BundleRef) -> tuple[tuple[str, int, int], ...]:
        """`files_of`, once per refresh."""
        key = (ref.name, ref.version)
        if key not in self._files:
            self._files[key] = files_of(ref.path)
        return self._files[key]

    def _plan(
        self, published: dict[tuple[str, int], bundle.BundleRef]
    ) -> dict[str, tuple[bundle.BundleRef | None, bundle.BundleRef | None]]:
        """Per name: the version that should serve (None: keep the one serving) and its challenger."""
        loadable: dict[str, dict[int, bundle.BundleRef]] = {}
        for key, ref in published.items():
            refused = self.failed.get(key)
            if refused is None or refused.files != self._files_now(ref):
                loadable.setdefault(ref.name, {})[ref.version] = ref
        plan: dict[str, tuple[bundle.BundleRef | None, bundle.BundleRef | None]] = {}
        for name, refs in loadable.items():
            current = self.current.get(name)
            state = self._release(name)
            if state is None and name in self.release_errors:  # a broken file and no last good state:
                continue  # which version was approved is unknown, so none serves (the error is logged)
            if state is None:  # no release file: the newest version serves
                newest = refs[max(refs)]
                # an older one only when the serving version left the store (retired: a rollback)
                keep = current is not None and newest.version < current.version and (name, current.version) in published
                plan[name] = (None if keep else newest, None)
                continue
            champion = refs.get(state.champion)
            if champion is None and current is None:  # nothing serves yet: the last earlier champion, never
                earlier = [v for v in reversed(state.previous) if v in refs]  # a version never promoted
                champion = refs[earlier[0]] if earlier else None
                if champion is None:
                    if self._unservable.get(name) != state.champion:
                        log.error("%s: release.json names version %d, which cannot be loaded, and no earlier "
                                  "champion can: not serving %s", name, state.champion, name)  # fmt: skip
                    self._unservable[name] = state.champion
                    continue
            said = self._unservable.get(name)
            if champion is None and current is not None and current.version != state.champion:
                if said != state.champion:  # once, not at every poll
                    log.error("%s: release.json names version %d, which cannot be loaded; still serving version %d",
                              name, state.champion, current.version)  # fmt: skip
                self._unservable[name] = state.champion
            else:
                self._unservable.pop(name, None)
            challenger = refs.get(state.challenger) if state.challenger is not None else None
            self._say_missing_challenger(name, state, published)
            held = self.challengers.get(name)
            if (
                challenger is None
                and held is not None
                and (name, held.version) in published
                and held.version == state.challenger
            ):
                challenger = held.ref  # refused since it loaded (a file of it changed): it stays, as a champion does
            plan[name] = (champion, challenger)
        return plan

    def _say_missing_challenger(
        self, name: str, state: Release, published: dict[tuple[str, int], bundle.BundleRef]
    ) -> None:
        """Once per file: its challenger is not in the store, so no canary or shadow runs (a refused
        one is said by its refusal)."""
        missing = state.challenger is not None and (name, state.challenger) not in published
        if not missing:
            self._no_challenger.pop(name, None)
        elif self._no_challenger.get(name) != state.challenger:
            assert state.challenger is not None
            self._no_challenger[name] = state.challenger
            doing = f"; its canary share {state.canary:g} answers nothing" if state.canary else ""
            doing += "; no shadow" if state.shadow else ""
            log.error("%s: release.json names challenger version %d, which is not in the store%s",
                      name, state.challenger, doing)  # fmt: skip

    def _release(self, name: str) -> Release | None:
        """A name's release state: its file when it changed and reads well, else the last good one."""
        path = release.path_of(self.settings.models_dir, name)
        try:
            st = path.stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if name in self._release_seen and self._release_seen[name] == seen:
            return self.releases.get(name)
        self._release_seen[name] = seen
        try:
            found = release.read(self.settings.models_dir, name)
        except ReleaseError as exc:
            self.release_errors[name] = str(exc)
            self.telemetry.reloads.labels("failed").inc()
            kept = self.releases.get(name)
            if kept is None and name in self.current:  # the last good state is what serves now
                held = self.challengers.get(name)
                kept = self.releases[name] = Release(self.current[name].version, held.version if held else None)
            log.error("refusing %s: %s (keeping the last good state: %s)", path, exc, kept.versions() if kept else None)
            return kept
        self.release_errors.pop(name, None)
        if found is None:
            self.releases.pop(name, None)
        else:
            self.releases[name] = found
        return found

    def _hold_challenger(self, name: str, model: LoadedModel | None) -> None:
        old = self.challengers.pop(name, None)
        if old is not None and old is not model:
            self.telemetry.model_info.labels(old.name, str(old.version), old.provider, "challenger").set(0)
        if model is not None:
            self.failed.pop((model.name, model.version), None)
            self.challengers[name] = model
            self.telemetry.model_info.labels(model.name, str(model.version), model.provider, "challenger").set(1)
            log.info("%s version %d is challenger", name, model.version)
        if old is not None and old is not self.current.get(name) and old is not model:
            old.close()

    def _arrange(self, name: str) -> None:
        """The canary share and the shadow of a name, as its release state and the settings say."""
        state, champion, challenger = self.releases.get(name), self.current.get(name), self.challengers.get(name)
        share = state.canary if state is not None and challenger is not None else 0.0
        if share:
            self.canary[name] = share
        else:
            self.canary.pop(name, None)
        wanted = (
            challenger is not None and champion is not None and (self.settings.shadow or bool(state and state.shadow))
        )
        shadow = self.shadows.get(name)
        if shadow is not None and (
            not wanted or shadow.champion is not champion or shadow.challenger is not challenger
        ):
            self.shadows.pop(name).close()
            shadow = None
        if wanted and shadow is None:
            assert champion is not None and challenger is not None
            try:
                keyed = self.settings.log is not None  # outcomes can come back: keep both outputs per id
                self.shadows[name] = Shadow(
                    champion, challenger, self.settings.monitor_window, self.settings.shadow_queue_rows, keyed
                )
            except NotComparable as exc:
                log.error("%s: no shadow for version %d: %s", name, challenger.version, exc)

    def release_brief(self, name: str) -> dict[str, Any]:
        """Challenger, canary share and shadowing, for GET /models: who else answers during a canary."""
        challenger = self.challengers.get(name)
        return {
            "challenger": challenger.version if challenger else None,
            "canary": self.canary.get(name, 0.0),
            "shadow": name in self.shadows,
        }

    def release_state(self, name: str) -> dict[str, Any]:
        """Champion, challenger, canary share, shadow agreement and the last decisions, for GET /models/{name}."""
        state, champion, challenger = self.releases.get(name), self.current.get(name), self.challengers.get(name)
        shadow = self.shadows.get(name)
        return {
            "champion": champion.version if champion else None,
            "challenger": challenger.version if challenger else None,
            "canary": self.canary.get(name, 0.0),
            "shadow": shadow.report() if shadow is not None else None,
            "file": state is not None,
            "refused": self.release_errors.get(name),
            "history": list(state.history[-release.HISTORY_SHOWN :]) if state is not None else [],
        }

    def _refuse(
        self, ref: bundle.BundleRef, exc: Exception, report: ReloadReport, files: tuple[tuple[str, int, int], ...]
    ) -> None:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.failed[(ref.name, ref.version)] = Refusal(message, files)
        report.failed[f"{ref.name}@{ref.version}"] = message
        self.telemetry.reloads.labels("failed").inc()
        kept = self.current.get(ref.name)
        log.error(
            "refusing bundle %s: %s (still serving %s)",
            ref.path,
            message,
            f"version {kept.version}" if kept else "nothing for this name",
        )

    def _swap(self, model: LoadedModel) -> None:
        self.failed.pop((model.name, model.version), None)
        old = self.current.get(model.name)
        self.current[model.name] = model  # one dict assignment: requests see old or new
        if old is not None:  # first: the same version loaded again (a copy completed) keeps its 1
            self.telemetry.model_info.labels(old.name, str(old.version), old.provider, "champion").set(0)
        self.telemetry.model_info.labels(model.name, str(model.version), model.provider, "champion").set(1)
        self.telemetry.queue_depth.labels(model.name).set_function(lambda: model.batcher.depth)
        self.telemetry.drift[model.name] = model.drift  # a new version starts a new window
        if old is not None and old is not self.challengers.get(model.name):
            old.close()  # in-flight requests finish on the session they started on
        if old is not None and old.version > model.version:
            log.warning("rolled back %s: version %d serves again (was %d)", model.name, model.version, old.version)
        log.info("serving %s version %d on %s", model.name, model.version, model.provider)

    async def poll(self) -> None:
        """Look for new versions every poll_interval_s, forever."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("model store scan failed")


def version_in_path(text: str) -> int | str:
    """A version as a URL names it: its number where it is digits (as the store names versions),
    else the text itself, which no version matches (`1.0`, `+1`, `abc` and 19 digits or more: a 404
    naming it, on every route alike)."""
    number = bundle.version_given(text)
    return text if number is None else number
