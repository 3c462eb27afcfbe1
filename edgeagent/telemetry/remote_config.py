"""Remote config: ``config/desired`` in, ``config/reported`` out, with a probation and rollback.

``config/desired`` (retained) holds ``{"version": N, "config": {...}}``: the remote layer over
the config file, whole; a key it leaves out comes from the file. It is validated with the same
``Config`` model as the file (errors name the field path), and only keys that can change in a
running agent (``LIVE``) may differ from what runs: anything else needs a restart and is
refused. A version at or below the last one answered is ignored, so the retained message seen
again on every reconnect changes nothing.

An applied config is on probation for ``telemetry.config_probation_ticks`` ticks: if the power
data go stale when they were fresh, the workers start failing, or the outbox cannot be written,
the previous config comes back and the report says ``rolled-back`` and why. Only a config that
passed its probation is stored as the last good one (``remote-config.json`` in the state
directory) and laid over the file at the next start; an agent that stops during a probation
comes back on the previous config and reports the version rolled back.

``config/reported`` (retained, through the outbox) holds the version answered, its status
(``applied``, ``rejected``, ``rolled-back``), the errors or the reason, and the whole config in
force with its secrets redacted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeagent.config import Config, ConfigError, load_config
from edgeagent.telemetry.commands import CommandFailed, FieldError, errors_of
from edgeagent.telemetry.mqtt import Inbound
from edgeagent.telemetry.outbox import Kind
from edgeagent.workloads.inbox import write_atomic

log = logging.getLogger(__name__)

LIVE = ("battery", "governor", "workload.model", "workload.fallbacks", "telemetry.interval_s",
        "power.stale_after_s", "jobs.max_attempts", "jobs.best_effort_ttl_h",
        "jobs.default_work_cpu_s", "jobs.share_inputs")
RESTART_ONLY = ("governor.max_workers",)  # the worker threads are made at start
SECRET_WORDS = ("password", "secret", "key")
Status = Literal["applied", "rejected", "rolled-back"]


class DesiredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    config: dict[str, Any]


class ConfigReport(BaseModel):
    version: int | None = Field(description="the desired version answered; None: unreadable")
    status: Status
    source: Literal["desired", "reload", "start"]
    applied_version: int = Field(description="the remote version in force; 0: the file alone")
    probation: bool = Field(default=False, description="applied, still watched")
    reason: str | None = None
    errors: list[FieldError] = Field(default_factory=list)
    config: dict[str, Any] = Field(description="the config in force, secrets redacted")
    ts: float = Field(default_factory=time.time)


@dataclass(frozen=True)
class Health:
    """What the probation watches."""

    power_fresh: bool
    worker_errors: int
    outbox_errors: int
    last_error: str | None


class Configurable(Protocol):
    """What remote config needs of the agent (``edgeagent.agent.Agent``)."""

    def apply_config(self, config: Config) -> None: ...

    def health(self) -> Health: ...


class Store(Protocol):
    """Where reports go: the outbox, so a report made offline still arrives."""

    def enqueue(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                kind: Kind = "event") -> None: ...


@dataclass(frozen=True)
class _Layer:
    version: int
    overlay: dict[str, Any]


@dataclass
class _Trial:
    layer: _Layer
    source: Literal["desired", "reload"]
    previous: Config
    previous_file: Config
    baseline: Health
    ticks_left: int


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value for every non-table value (a list is one value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


def merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        out[key] = (merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def restart_fields(running: Config, candidate: Config) -> list[str]:
    """The keys that differ and cannot change in a running agent."""
    old, new = leaves(running.model_dump(mode="json")), leaves(candidate.model_dump(mode="json"))
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p)
                  and (_under(p, RESTART_ONLY) or not _under(p, LIVE)))


def redacted(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (redacted(v) if isinstance(v, dict)
                else "<redacted>" if v is not None and any(w in k for w in SECRET_WORDS)
                else v) for k, v in data.items()}


class RemoteConfig:
    def __init__(self, file_config: Config, *, path: Path | None, state_path: Path,
                 probation_ticks: int, max_bytes: int) -> None:
        """``file_config`` as read from ``path`` (None: no file to reload). The last good
        remote layer in ``state_path`` is laid over it: ``config`` is what the agent runs."""
        self.file = file_config
        self.path = path
        self.state_path = state_path
        self.probation_ticks = probation_ticks
        self.max_bytes = max_bytes
        self.good: _Layer | None = None
        self.answered = 0  # the highest desired version answered, whatever the answer
        self.counts = {"applied": 0, "rejected": 0, "rolled-back": 0}
        self.last_error: str | None = None
        self._trial: _Trial | None = None
        self._agent: Configurable | None = None
        self._store: Store | None = None
        self._topic = ""
        self._pending: list[ConfigReport] = []  # made before ``attach``
        self.config = file_config
        self._load_state()

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            answered = int(state.get("answered", 0))
            good, trial = state.get("good"), state.get("trial")
            layer = None if good is None else _Layer(int(good["version"]),
                                                     dict(good["overlay"]))
            trial_version = None if trial is None else int(trial["version"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # A state file that is not ours to read must not keep the agent from starting:
            # it runs on the file alone, and says so.
            self.last_error = f"{self.state_path}: {exc!r}"
            log.warning("remote config: ignoring %s", self.last_error)
            return
        self.answered = answered
        if layer is not None:
            try:
                self.config = self._validate(self.file, layer.overlay)
                self.good = layer
            except CommandFailed as exc:
                self._report(layer.version, "rejected", "start", errors=exc.errors,
                             reason="the last good remote config no longer fits the file")
        if trial_version is not None:
            self._report(trial_version, "rolled-back", "start",
                         reason="the agent stopped during its probation")
        if trial_version is not None or (layer is not None and self.good is None):
            self._save()

    def attach(self, agent: Configurable, store: Store, reported_topic: str) -> None:
        """Start answering: reports made at start go out now."""
        self._agent, self._store, self._topic = agent, store, reported_topic
        pending, self._pending = self._pending, []
        for report in pending:
            self._publish(report)

    def telemetry(self) -> dict[str, Any]:
        return {"applied_version": self.applied_version, "answered_version": self.answered,
                "probation_ticks_left": 0 if self._trial is None else self._trial.ticks_left,
                **self.counts, "last_error": self.last_error}

    @property
    def applied_version(self) -> int:
        trial = self._trial
        if trial is not None and trial.source == "desired":
            return trial.layer.version
        return 0 if self.good is None else self.good.version

    def _validate(self, file_config: Config, overlay: dict[str, Any]) -> Config:
        """The file with ``overlay`` over it, if valid and live-applicable."""
        base = file_config.model_dump(mode="json")
        config_dir = Path.cwd() if self.path is None else self.path.resolve().parent
        try:
            candidate = Config.model_validate(merged(base, overlay),
                                              context={"config_dir": config_dir})
        except ValidationError as exc:
            raise CommandFailed(errors_of(exc)) from exc
        restart = restart_fields(self.config, candidate)
        if restart:
            raise CommandFailed([FieldError(field=p, message="changes only at a restart: "
                                            "edit the config file") for p in restart])
        return candidate

    def on_desired(self, inbound: Inbound) -> None:
        """The link's handler for ``config/desired``."""
        if not inbound.payload:  # the retained message was cleared
            return
        version: int | None = None
        try:
            if len(inbound.payload) > self.max_bytes:
                raise CommandFailed([FieldError(field="(payload)",
                                                message=f"larger than {self.max_bytes} bytes")])
            try:
                data = json.loads(inbound.payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CommandFailed([FieldError(field="(payload)",
                                                message=f"not valid JSON: {exc}")]) from exc
            if isinstance(data, dict) and isinstance(data.get("version"), int):
                version = data["version"]
                if version <= self.answered:
                    return  # answered already: the retained message again
            try:
                desired = DesiredConfig.model_validate(data)
            except ValidationError as exc:
                raise CommandFailed(errors_of(exc)) from exc
            candidate = self._validate(self.file, desired.config)
        except CommandFailed as exc:
            if version is not None:
                self.answered = version
                self._save()
            self._report(version, "rejected", "desired", errors=exc.errors)
            return
        self.answered = desired.version
        self._apply(candidate, _Layer(desired.version, desired.config), "desired", self.file)

    def reload(self) -> dict[str, Any]:
        """The ``reload`` command: read the file again, lay the last good remote layer over
        it and apply it (``CommandFailed`` names what is wrong; nothing changes then)."""
        if self.path is None:
            raise CommandFailed([FieldError(field="(config)", message="no config file")])
        try:
            file_config = load_config(self.path)
        except ConfigError as exc:
            raise CommandFailed([FieldError(field=i.path, message=i.message)
                                 for i in exc.issues]) from exc
        layer = self.good or _Layer(0, {})
        candidate = self._validate(file_config, layer.overlay)
        running = leaves(self.config.model_dump(mode="json"))
        changed = sorted(p for p, v in leaves(candidate.model_dump(mode="json")).items()
                         if running.get(p) != v)
        self._apply(candidate, layer, "reload", file_config)
        return {"changed": changed, "applied_version": self.applied_version}

    def _apply(self, candidate: Config, layer: _Layer, source: Literal["desired", "reload"],
               file_config: Config) -> None:
        assert self._agent is not None, "attach() first"
        if self._trial is not None:  # a new config while one is watched: keep the older base
            previous, previous_file = self._trial.previous, self._trial.previous_file
        else:
            previous, previous_file = self.config, self.file
        self._agent.apply_config(candidate)
        self.config, self.file = candidate, file_config
        self._trial = _Trial(layer, source, previous, previous_file, self._agent.health(),
                             self.probation_ticks)
        self._save()
        self._report(layer.version, "applied", source, probation=True)

    def watch(self) -> None:
        """Once per tick, after it: judge the config on probation."""
        trial = self._trial
        if trial is None or self._agent is None:
            return
        now, before = self._agent.health(), trial.baseline
        problem = None
        if before.power_fresh and not now.power_fresh:
            problem = "the power data went stale"
        elif now.worker_errors > before.worker_errors:
            problem = f"the workers are failing: {now.last_error}"
        elif now.outbox_errors > before.outbox_errors:
            problem = f"the outbox cannot be written: {now.last_error}"
        if problem is not None:
            self._agent.apply_config(trial.previous)
            self.config, self.file, self._trial = trial.previous, trial.previous_file, None
            self._save()
            self._report(trial.layer.version, "rolled-back", trial.source, reason=problem)
            return
        trial.ticks_left -= 1
        if trial.ticks_left <= 0:
            self._trial = None
            self.good = trial.layer if trial.layer.version else None
            self._save()
            self._report(trial.layer.version, "applied", trial.source)

    def _save(self) -> None:
        trial = self._trial
        state = {"answered": self.answered,
                 "good": None if self.good is None else vars(self.good),
                 "trial": None if trial is None else vars(trial.layer)}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_path, state)
        except OSError as exc:  # the config still applies; it will not survive a restart
            self.last_error = f"cannot store {self.state_path}: {exc}"
            log.warning("remote config: %s", self.last_error)

    def _report(self, version: int | None, status: Status,
                source: Literal["desired", "reload", "start"], *, probation: bool = False,
                reason: str | None = None, errors: list[FieldError] | None = None) -> None:
        if not probation:
            self.counts[status] += 1
        if errors or reason:
            self.last_error = reason or "; ".join(f"{e.field}: {e.message}" for e in errors or [])
        report = ConfigReport(version=version, status=status, source=source,
                              applied_version=self.applied_version, probation=probation,
                              reason=reason, errors=errors or [],
                              config=redacted(self.config.model_dump(mode="json")))
        if self._store is None:
            self._pending.append(report)
        else:
            self._publish(report)

    def _publish(self, report: ConfigReport) -> None:
        assert self._store is not None
        try:
            self._store.enqueue(self._topic, report.model_dump_json().encode(), 1, True,
                                kind="status")
        except sqlite3.Error as exc:
            self.last_error = f"cannot queue the report: {exc}"
            log.warning("remote config: %s", self.last_error)

