"""Serving the app under uvicorn: one process, or workers sharing only the store."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.bundle import BundleError, iter_bundles
from service.cpus import CpuBudget, cpu_budget
from service.features import did_you_mean
from service.http import protocol_for
from service.runtime import ProviderError, providers_for
from service.settings import Settings


def settings_from(flags: dict[str, Any]) -> Settings:
    """Settings from flags over TABSERVE_* variables; a bad value is one clear error."""
    try:
        return Settings(**flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        given = f"--{name.replace('_', '-')}" if name in flags else f"TABSERVE_{name.upper()}"  # where to change it
        raise ValueError(f"{given}: {first['msg']}") from None


def run_server(flags: dict[str, Any]) -> None:
    """Check the settings and device, then serve until interrupted."""
    settings = settings_from(flags)
    try:
        providers_for(settings.device)
    except ProviderError as exc:
        raise RuntimeError(str(exc)) from None
    names = _check_names(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1 and not settings.default_model:
        settings = _one_default(settings, names)
    protocol, options = protocol_for(settings)
    _raise_file_limit(settings.max_connections)
    _report_budget(cpu_budget(settings.cpus), settings)
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        http=protocol,
        **options,
        loop="uvloop",
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        proxy_headers=settings.proxy_headers,
    )
    if settings.workers > 1:
        # workers are separate processes; they rebuild the same Settings from the environment.
        for key, value in settings.model_dump(exclude_none=True).items():
            os.environ[f"TABSERVE_{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
        uvicorn.run("service.app:app_from_env", factory=True, workers=settings.workers, **common)
        return
    from service.app import create_app

    uvicorn.run(create_app(settings), **common)


def _one_default(settings: Settings, names: set[str]) -> Settings:
    """The default model of every worker: each would pin its own at its first read of the store (two
    could differ, and one restarted after a crash picks anew), so the first name by name now is theirs."""
    say = logging.getLogger("tabserve")
    if not names:
        say.warning("--workers %d on an empty store: each worker takes the first model it finds for /predict "
                    "and /invocations, and they may differ; --default-model names one", settings.workers)  # fmt: skip
        return settings
    first = min(names)
    if len(names) > 1:
        say.info("POST /predict and /invocations answer with %s in every worker (--default-model chooses)", first)
    return settings.model_copy(update={"default_model": first})


def _check_names(settings: Settings) -> set[str]:
    """Names the flags give, checked against the store's models where it has some (an empty store is
    filled later): a misspelt `--default-model` answers 404 to every /predict, and a misspelt
    `--log-exclude` field is a field logged. The store's model names."""
    models: dict[str, set[str]] = {}
    for ref in iter_bundles(settings.models_dir):  # each version's fields: an older one may serve
        fields = models.setdefault(ref.name, set())
        try:
            fields.update(ref.preprocess.known_fields)
        except (BundleError, OSError, ValueError, KeyError, TypeError):
            continue  # the store says why, by version, when it loads
    if not models:
        return set()
    if settings.default_model is not None and settings.default_model not in models:
        raise ValueError(
            f"--default-model {settings.default_model!r} is no model in {settings.models_dir}{did_you_mean(settings.default_model, models)}"
        )
    fields = set().union(*models.values())
    unknown = [f for f in settings.log_exclude if f not in fields] if settings.log else []
    if unknown:
        raise ValueError(
            f"--log-exclude {unknown[0]!r} is no field of any model's records{did_you_mean(unknown[0], fields)}"
        )
    return set(models)


def _raise_file_limit(connections: int) -> None:
    """Raise the soft open-file limit to the hard one (a handle per connection); warn if too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < connections + 256:
        logging.getLogger("tabserve").warning(
            "open-file limit %d leaves little room for max_connections=%d: lower it, or raise the limit",
            hard,
            connections,
        )


def _report_budget(budget: CpuBudget, settings: Settings) -> None:
    """Say once, at start, how many CPUs the service sizes itself by and how they are shared."""
    each = settings.sized(budget)
    say = logging.getLogger("tabserve")
    say.info(
        "CPU budget: %s; %d worker(s), %d ONNX Runtime thread(s) each, run on the %s",
        budget,
        settings.workers,
        each.threads,
        "event loop" if each.inference == "loop" else "inference thread",
    )
    if settings.workers > budget.cpus:
        say.warning(
            "workers=%d on a budget of %d CPU(s): they take turns on the same CPUs (memory for nothing)",
            settings.workers,
            budget.cpus,
        )
