"""Commands on ``<root>/<site>/<node>/cmd``: MQTT v5 request/response.

A request is a JSON ``CommandRequest``; the reply, a ``CommandReply``, goes to the request's
response topic with its correlation data, or to ``<node>/cmd/reply`` when it named none (MQTT
3.1.1 clients, ``mosquitto_pub``). Every request gets a reply. A request that is oversized
(refused unread), unsigned when signing is required, not JSON, unknown, or has bad arguments
gets ``ok: false`` with errors naming the field, and changes nothing. Commands change the
running agent only: a restart, a reload or a config change returns to the configuration.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeagent.config import BatteryConfig, field_errors
from edgeagent.telemetry.mqtt import Inbound
from edgeagent.telemetry.signing import Verifier
from edgeagent.workloads.jobs import Job, JobSpec

log = logging.getLogger(__name__)

Policy = Literal["governor", "always-on"]
CommandName = Literal["status", "set_reserve", "set_policy", "pause", "resume", "submit_job",
                      "reload"]
DEFAULT_MAX_BYTES = 64 * 1024


class FieldError(BaseModel):
    field: str  # dotted path in the request ("args.pct"); "(payload)" for the message itself
    message: str


class CommandFailed(Exception):
    """A command that cannot be carried out; nothing was changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, max_length=128, description="echoed in the reply")


class CommandReply(BaseModel):
    ok: bool
    cmd: str | None = None
    id: str | None = None
    result: Any = None
    errors: list[FieldError] = Field(default_factory=list)


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReserveArgs(NoArgs):
    pct: float = Field(description="the battery reserve, within battery.reserve_soc_pct's bounds")

    @field_validator("pct")
    @classmethod
    def _within_config_bounds(cls, pct: float) -> float:
        try:
            BatteryConfig(reserve_soc_pct=pct)  # the config's bounds, the one source of them
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from exc
        return pct


class PolicyArgs(NoArgs):
    policy: Policy


ARGS: dict[str, type[BaseModel]] = {
    "status": NoArgs, "set_reserve": ReserveArgs, "set_policy": PolicyArgs, "pause": NoArgs,
    "resume": NoArgs, "submit_job": JobSpec, "reload": NoArgs,
}


class Controllable(Protocol):
    """What commands need of the agent (``edgeagent.agent.Agent``)."""

    def telemetry(self) -> dict[str, Any]:
        """The ``status`` command's answer."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_reserve(self, pct: float) -> None: ...

    def set_policy(self, policy: Policy) -> None: ...

    def submit_job(self, spec: JobSpec) -> tuple[Job, bool]:
        """Raises ``CommandFailed`` for a job this site cannot take."""
        ...


class Replier(Protocol):
    """What commands need of ``MqttLink``."""

    def reply(self, request: Inbound, payload: bytes) -> bool: ...

    def publish_latest(self, topic: str, payload: bytes, retain: bool = True) -> bool: ...


def errors_of(error: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's errors as field errors, their paths under ``prefix``."""
    return [FieldError(field=prefix + path, message=message)
            for path, message, _ in field_errors(error)]


class Commands:
    def __init__(self, agent: Controllable, link: Replier, cmd_topic: str, *,
                 reload: Callable[[], dict[str, Any]], max_bytes: int = DEFAULT_MAX_BYTES,
                 verifier: Verifier | None = None) -> None:
        """``reload`` re-reads the config file and applies it (``CommandFailed`` if invalid);
        with a ``verifier`` only signed commands are taken."""
        self.agent = agent
        self.link = link
        self.reply_topic = f"{cmd_topic}/reply"
        self.reload = reload
        self.max_bytes = max_bytes
        self.verifier = verifier
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None

    def telemetry(self) -> dict[str, Any]:
        return {"received": self.counts["received"], "ok": self.counts["ok"],
                "refused": self.counts["refused"], "errors": self.counts["errors"],
                "last_error": self.last_error}

    def handle(self, inbound: Inbound) -> None:
        """The link's handler: answer one request, whatever it holds."""
        self.counts["received"] += 1
        try:
            reply = self._answer(inbound)
        except Exception as exc:  # a bug behind a command: still answered, the agent runs on
            log.exception("command failed")
            self.counts["errors"] += 1
            reply = _refused("(agent)", f"internal error: {exc!r}")
        if reply.ok:
            self.counts["ok"] += 1
        else:
            self.counts["refused"] += 1
            self.last_error = "; ".join(f"{e.field}: {e.message}" for e in reply.errors)
            log.warning("command refused: %s", self.last_error)
        payload = reply.model_dump_json().encode()
        if not self.link.reply(inbound, payload):
            self.link.publish_latest(self.reply_topic, payload, retain=False)

    def _answer(self, inbound: Inbound) -> CommandReply:
        payload = inbound.payload
        if len(payload) > self.max_bytes:
            return _refused("(payload)", f"larger than {self.max_bytes} bytes")
        if self.verifier is not None:
            problem = self.verifier.check(inbound.topic, payload, inbound.user_properties)
            if problem is not None:
                return _refused("(signature)", problem)
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _refused("(payload)", f"not valid JSON: {exc}")
        if not isinstance(data, dict):
            return _refused("(payload)", "must be a JSON object")
        raw_cmd, raw_id = data.get("cmd"), data.get("id")
        cmd = raw_cmd if isinstance(raw_cmd, str) else None
        request_id = raw_id if isinstance(raw_id, str) else None
        try:
            request = CommandRequest.model_validate(data)
        except ValidationError as exc:
            return CommandReply(ok=False, cmd=cmd, id=request_id, errors=errors_of(exc))
        try:
            args = ARGS[request.cmd].model_validate(request.args)
        except ValidationError as exc:
            return CommandReply(ok=False, cmd=cmd, id=request_id, errors=errors_of(exc, "args."))
        try:
            result = self._run(request.cmd, args)
        except CommandFailed as exc:
            return CommandReply(ok=False, cmd=cmd, id=request_id, errors=exc.errors)
        return CommandReply(ok=True, cmd=cmd, id=request_id, result=result)

    def _run(self, cmd: str, args: BaseModel) -> Any:
        agent = self.agent
        if cmd == "status":
            return agent.telemetry()
        if isinstance(args, ReserveArgs):
            agent.set_reserve(args.pct)
            return {"reserve_pct": args.pct}
        if isinstance(args, PolicyArgs):
            agent.set_policy(args.policy)
            return {"policy": args.policy}
        if isinstance(args, JobSpec):
            job, created = agent.submit_job(args)
            return {"job_id": job.id, "state": job.state, "reason": job.reason,
                    "created": created}
        if cmd == "pause":
            agent.pause()
            return {"paused": True}
        if cmd == "resume":
            agent.resume()
            return {"paused": False}
        return self.reload()


def _refused(field: str, message: str) -> CommandReply:
    return CommandReply(ok=False, errors=[FieldError(field=field, message=message)])
