"""The agent's configuration: one TOML file, validated at the edge by pydantic models.

Every section forbids unknown keys so a typo is an error, not a silently ignored setting. The
defaults are the safe ones: a battery reserve is always kept, and nothing is written to sysfs or
cgroupfs unless an actuator is enabled explicitly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from edgeagent import tomlfile
from edgeagent.board_detect import AUTO, Detection, detect_board
from edgeagent.boards import BoardProfile, available_boards, load_board
from edgeagent.infer.bundled import BUNDLED_MODELS
from edgeagent.telemetry.address import BrokerAddress
from edgeagent.telemetry.signing import read_key

Driver = Literal["vedirect", "jbd", "daly", "epever", "renogy"]
MqttProtocol = Literal["5", "3.1.1"]
TOPIC_LEVEL = r"^[A-Za-z0-9_-]+$"


# A sleep's wake time is planned at the tick's start and checked by the actuator moments later:
# its shortest sleep must sit this far below the governor's.
SLEEP_SLACK_S = 60.0


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteConfig(Section):
    id: str = Field(default="site1", pattern=TOPIC_LEVEL, description="site id (topic level)")
    node: str = Field(default="node1", pattern=TOPIC_LEVEL, description="node id (topic level)")
    board: str = Field(default=AUTO, description='board profile name, or "auto": detected '
                                                 "from the device tree (edgeagent.board_detect)")
    latitude: float | None = Field(default=None, ge=-90, le=90,
                                   description="degrees north; with longitude, the solar forecast")
    longitude: float | None = Field(default=None, ge=-180, le=180, description="degrees east")

    @model_validator(mode="after")
    def _both_coordinates(self) -> SiteConfig:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("site.latitude and site.longitude: give both or neither")
        return self

    @field_validator("board")
    @classmethod
    def _known_board(cls, name: str) -> str:
        if name != AUTO and name not in available_boards():
            known = ", ".join([AUTO, *available_boards()])
            raise ValueError(f"unknown board {name!r}; known boards: {known}")
        return name

    def detection(self) -> Detection:
        """The board profile to use: the configured one, or with "auto" this machine's."""
        if self.board == AUTO:
            return _this_machine()
        return Detection(self.board, True, "site.board")

    def profile(self) -> BoardProfile:
        return load_board(self.detection().board)


@functools.cache
def _this_machine() -> Detection:
    """Detected once: the board does not change under a running agent."""
    return detect_board()


class PowerDevice(Section):
    driver: Driver = "vedirect"
    port: str = Field(description="serial port; prefer a stable /dev/serial/by-id/... name")
    baud: int | None = Field(default=None, gt=0, description="default: the protocol's own")
    unit: int = Field(default=1, ge=1, le=247, description="Modbus unit id (epever, renogy)")
    poll_interval_s: float = Field(default=2.0, gt=0, le=3600,
                                   description="how often polled devices are asked")
    serial: str | None = Field(
        default=None, min_length=1,
        description="the device's serial number (VE.Direct SER#, Renogy serial register): "
                    "readings from any other device on this port are not believed")


class PowerConfig(Section):
    devices: list[PowerDevice] = Field(default_factory=list)
    stale_after_s: float = Field(default=5.0, gt=0, le=300)


class BatteryConfig(Section):
    capacity_wh: float = Field(default=1200.0, gt=0)
    reserve_soc_pct: float = Field(default=30.0, ge=5, le=95)
    resume_margin_pct: float = Field(default=5.0, ge=0, le=50)


class GovernorConfig(Section):
    """How the governor plans: look-ahead, pessimism, dwell times, the adaptive reserve, and
    the site's power chain as its plan models it (the defaults are a small MPPT charger and a
    12 V -> 5 V converter feeding the board)."""

    max_workers: int = Field(default=2, ge=0, le=64)
    horizon_h: float = Field(default=48.0, gt=0, le=72, description="how far the plan looks")
    tick_s: float = Field(default=5.0, gt=0, le=3600)
    forecast_quantile: float = Field(
        default=0.85, gt=0, lt=1,
        description="clearness quantile of past days taken for the days ahead: higher spends "
                    "more before the sun that refills the battery, lower saves more for it; "
                    "the storm margin keeps the reserve either way")
    admission_quantile: float = Field(
        default=0.25, gt=0, lt=1,
        description="the same quantile for the cautious forecast that job admission counts "
                    "on: lower rejects more deferrable jobs and misses fewer deadlines")
    min_dwell_s: float = Field(
        default=1800.0, ge=0, le=86400,
        description="least time at a work level before the plan may change it; the reserve "
                    "overrides it")
    allow_sleep: bool = Field(
        default=False,
        description="halt the board while the plan has no work for it; needs something that "
                    "wakes it at the planned time (an RTC alarm, the charger's load timer)")
    min_sleep_s: float = Field(default=1800.0, ge=0, le=86400, description="shortest halt")
    reserve_step_pct: float = Field(
        default=2.0, ge=0, le=20,
        description="the reserve rises this much for each day without a full charge and "
                    "falls as much for each day with one (Victron BatteryLife)")
    reserve_max_raise_pct: float = Field(default=10.0, ge=0, le=50,
                                         description="the most the reserve rises")
    full_soc_pct: float = Field(default=97.0, gt=50, le=100,
                                description="state of charge that counts as a full charge")
    margin_pct: float = Field(default=1.0, ge=0, le=20,
                              description="the plan stays this far above the reserve")
    storm_clearness: float = Field(
        default=0.05, ge=0, le=1,
        description="the sun of a storm, as a share of clear sky (see storm_h)")
    storm_h: float = Field(
        default=96.0, ge=0, le=720,
        description="the plan keeps enough charge to sleep through a storm this long without "
                    "touching the reserve")
    charge_efficiency: float = Field(default=0.95, gt=0, le=1,
                                     description="the battery's, as the plan assumes it")
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1)
    converter_efficiency: float = Field(default=0.9, gt=0, le=1,
                                        description="battery bus -> board converter")
    standby_w: float = Field(default=0.15, ge=0, le=100,
                             description="drawn from the battery besides the board (charger)")
    agent_w: float = Field(default=0.1, ge=0, le=100,
                           description="the agent's own draw on top of the board's idle")
    lean_telemetry_interval_s: float = Field(
        default=300.0, gt=0, le=86400, description="telemetry interval while energy is short")
    cpufreq_min_pct: float = Field(default=50.0, gt=0, le=100,
                                   description="the lowest cpufreq cap, at work level 0")


def _model_ref(model: str, info: ValidationInfo) -> str:
    """A bundled model's name, or a path to an existing .onnx/.tflite file, made absolute.

    A relative path is relative to the config file's folder, not to the working directory of
    whoever reads the config (systemd starts the service in /).
    """
    if model in BUNDLED_MODELS:
        return model
    path = Path(model)
    if path.suffix.lower() not in (".onnx", ".tflite"):
        raise ValueError(f"{model!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) "
                         "nor a path to a .onnx or .tflite file")
    base = (info.context or {}).get("config_dir", Path.cwd())
    path = (base / path).resolve()
    if not path.is_file():
        raise ValueError(f"no model file at {path}")
    return str(path)


class ModelFallback(Section):
    """A cheaper model to run while the governor's power budget is below ``below_budget_w``."""

    model: str
    below_budget_w: float = Field(gt=0, le=1000)

    _check_model = field_validator("model")(_model_ref)


class WorkloadConfig(Section):
    """What the workers run: ``model`` when energy allows, a fallback when the budget is short.

    With several fallbacks, the one with the lowest ``below_budget_w`` that the budget is under
    wins: list one per band, from generous to scarce.
    """

    model: str = "digits-int8"
    fallbacks: list[ModelFallback] = Field(default_factory=list, max_length=8)
    batch_size: int = Field(default=32, ge=1, le=4096)
    threads_per_worker: int = Field(default=1, ge=1, le=16)

    _check_model = field_validator("model")(_model_ref)

    @model_validator(mode="after")
    def _distinct_fallbacks(self) -> WorkloadConfig:
        thresholds = [f.below_budget_w for f in self.fallbacks]
        if len(set(thresholds)) != len(thresholds):
            raise ValueError("fallbacks: each needs its own below_budget_w")
        models = [f.model for f in self.fallbacks]
        if self.model in models or len(set(models)) != len(models):
            raise ValueError("fallbacks: each names a model of its own, other than `model`")
        return self

    def models(self) -> list[str]:
        """Every model the workers may be asked to run, the main one first."""
        return list(dict.fromkeys([self.model, *(f.model for f in self.fallbacks)]))


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery (``telemetry.homeassistant``)."""

    enabled: bool = False
    prefix: str = Field(default="homeassistant", pattern=r"^[^#+/]+(/[^#+/]+)*$",
                        description="Home Assistant's discovery prefix")
    support_url: str | None = Field(default=None, description="the origin's url in discovery")


def _existing_file(path: Path | None, info: ValidationInfo) -> Path | None:
    """An existing file, made absolute from the config file's folder."""
    if path is None:
        return None
    path = ((info.context or {}).get("config_dir", Path.cwd()) / path).resolve()
    if not path.is_file():
        raise ValueError(f"no file at {path}")
    return path


class TlsConfig(Section):
    """TLS to an ``mqtts://`` broker (``telemetry.tls``); a certificate and key: mutual TLS."""

    ca_file: Path | None = Field(default=None,
                                 description="CA that signed the broker's certificate; "
                                             "default: the system's CA store")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None,
                                  description="client key (PEM); default: inside cert_file")
    insecure: bool = Field(default=False,
                           description="skip the broker host name check (the certificate is "
                                       "still verified against ca_file): tests only")

    _files_exist = field_validator("ca_file", "cert_file")(_existing_file)

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("cert_file") is None:
            raise ValueError("a key_file needs its cert_file")
        return _existing_file(path, info)


class TelemetryConfig(Section):
    broker: str | None = Field(default=None, description="mqtt://host:port, mqtts://, unix:///path")
    topic_root: str = Field(default="edgeagent", pattern=r"^[^#+/]+(/[^#+/]+)*$")
    interval_s: float = Field(default=10.0, gt=0, le=86400)
    outbox_path: Path = Path("/var/lib/edgeagent/outbox.db")
    outbox_max_rows: int = Field(default=100_000, ge=10, le=100_000_000,
                                 description="rows kept; when full, old telemetry is thinned, "
                                             "then rows dropped by priority (counted)")
    outbox_max_bytes: int = Field(default=64 << 20, ge=1 << 20, le=1 << 40,
                                  description="disk bytes of the outbox, WAL included (the "
                                              "database is capped at 3/4 of it, or less 4 MiB)")
    protocol: MqttProtocol = Field(default="5", description='"5" (MQTT v5) or "3.1.1"')
    username: str | None = None
    password: str | None = Field(default=None, description="better: password_file")
    password_file: Path | None = Field(
        default=None, description="file holding the broker password, so it stays out of this "
                                  "TOML (trailing newline ignored)")
    tls: TlsConfig | None = Field(default=None, description="for an mqtts:// broker")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600,
                                   description="shortest wait before reconnecting")
    reconnect_max_s: float = Field(default=120.0, gt=0, le=86400,
                                   description="longest wait; waits grow to it, with jitter")
    will_delay_s: int = Field(default=5, ge=0, le=3600,
                              description="MQTT v5 Will Delay: a shorter blip does not flap "
                                          "the status to offline")
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    command_max_bytes: int = Field(
        default=65536, ge=1024, le=16 << 20,
        description="larger commands and desired configs are refused unread")
    command_hmac_key_file: Path | None = Field(
        default=None, description="when set, only commands signed with this key are taken "
                                  "(HMAC-SHA256): for brokers without per-device ACLs")
    config_probation_ticks: int = Field(
        default=12, ge=1, le=100_000,
        description="ticks a remote config change is watched; unhealthy: rolled back")

    @field_validator("command_hmac_key_file")
    @classmethod
    def _readable_key(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        path = ((info.context or {}).get("config_dir", Path.cwd()) / path).resolve()
        try:
            read_key(path)
        except OSError as exc:
            raise ValueError(f"cannot read the key: {exc}") from exc
        return path

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, url: str | None) -> str | None:
        if url is not None:
            BrokerAddress.parse(url)  # its ValueError names what is wrong
        return url

    @field_validator("password_file")
    @classmethod
    def _one_password(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("password") is not None:
            raise ValueError("give password or password_file, not both")
        return _existing_file(path, info)

    @field_validator("tls")
    @classmethod
    def _tls_needs_mqtts(cls, tls: TlsConfig | None, info: ValidationInfo) -> TlsConfig | None:
        broker = info.data.get("broker")
        if tls is not None and broker is not None and not BrokerAddress.parse(broker).tls:
            raise ValueError(f"TLS settings need an mqtts:// broker, not {broker!r}")
        return tls

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff_span(cls, high: float, info: ValidationInfo) -> float:
        if high < info.data.get("reconnect_min_s", 0):
            raise ValueError("must be at least reconnect_min_s")
        return high

    def broker_password(self) -> str | None:
        """The password, from ``password`` or read from ``password_file``."""
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return self.password


class FleetJobsConfig(Section):
    """Jobs from ``<root>/<site>/jobs`` and ``<root>/fleet/jobs`` (``jobs.fleet``), taken
    through a shared subscription while the governor has energy to spare."""

    enabled: bool = False
    share_group: str = Field(default="edgeagent", pattern=TOPIC_LEVEL,
                             description="the $share group: every node of one pool uses the same")
    subscribe_after_s: float = Field(default=300.0, ge=0, le=86400,
                                     description="spare energy must last this long before the "
                                                 "node subscribes (it unsubscribes at once)")
    max_hops: int = Field(default=10, ge=0, le=1000,
                          description="hand-backs of a job before a node rejects it")


class JobsConfig(Section):
    """The durable job queue and its inbox directory (``workloads.jobs``, ``workloads.inbox``).

    Job cost is in CPU-seconds of one core (``work_cpu_s``); its energy follows from the board
    profile. Input data stays on the site: results carry metadata and the result, and the
    input's reference only with ``share_inputs``.
    """

    path: Path | None = Field(default=None, description="SQLite queue; default: jobs.db "
                              "next to telemetry.outbox_path (the service's state directory)")
    inbox_dir: Path | None = Field(default=None,
                                   description="directory polled for job files; None: no inbox")
    max_attempts: int = Field(default=3, ge=1, le=100,
                              description="runs of a job before it is failed")
    best_effort_ttl_h: float = Field(default=24.0, gt=0, le=24 * 365,
                                     description="a best-effort job waits this long at most")
    default_work_cpu_s: float = Field(default=10.0, gt=0, le=7 * 86400,
                                      description="estimated cost of a job that states none")
    keep_finished_days: float = Field(default=30.0, gt=0,
                                      description="finished jobs are pruned after this")
    share_inputs: bool = Field(default=False,
                               description="let results carry the input's reference")
    fleet: FleetJobsConfig = Field(default_factory=FleetJobsConfig)


class ActuatorConfig(Section):
    """Knobs that write to the machine; every one is off until the operator turns it on."""

    cpufreq: bool = False
    cgroup: bool = False
    nvpmodel: bool = Field(default=False, description="Jetson power modes through nvpmodel")
    dry_run: bool = Field(default=False,
                          description="log what the knobs would be set to, write nothing")
    sysfs_root: Path = Path("/sys")
    cgroup_slice: str = Field(
        default="edgeagent.slice/edgeagent-workloads.slice",
        description="the workloads' cgroup under <sysfs_root>/fs/cgroup (systemd puts a unit "
                    "with Slice=edgeagent-workloads.slice in edgeagent.slice/...)")
    nvpmodel_conf: Path = Path("/etc/nvpmodel.conf")
    nvpmodel_command: list[str] = Field(
        default_factory=lambda: ["nvpmodel"], min_length=1,
        description="switching modes needs root: e.g. [\"sudo\", \"-n\", \"nvpmodel\"]")
    min_interval_s: float = Field(
        default=30.0, ge=0, le=3600,
        description="least seconds between a knob's write and the next one that raises it "
                    "(lowering is never delayed): bounds flapping")
    sleep: bool = Field(
        default=False,
        description="halt the board when the governor decides to sleep (governor.allow_sleep), "
                    "after arming the RTC wake alarm; never without an RTC")
    rtc: str = Field(default="rtc0", pattern=r"^rtc[0-9]+$",
                     description="the RTC whose alarm powers the board on: "
                                 "<sysfs_root>/class/rtc/<rtc>/wakealarm")
    sleep_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "poweroff"], min_length=1,
        description="halts the board; the agent runs unprivileged, so a polkit rule must allow "
                    "it or it must be a privileged helper")
    sleep_min_s: float = Field(default=1200.0, ge=60, le=86400,
                               description="never halt for less than this")
    sleep_max_s: float = Field(default=129600.0, gt=0, le=259200,
                               description="never arm a wake further away than this (36 h): a "
                                           "wrong clock must not cost days")
    sleep_grace_s: float = Field(
        default=1800.0, ge=60, le=86400,
        description="no halt within this long of the agent's start, so a misconfigured site "
                    "cannot boot-loop into sleep")

    @model_validator(mode="after")
    def _sleep_span(self) -> ActuatorConfig:
        if self.sleep_max_s <= self.sleep_min_s:
            raise ValueError("sleep_max_s: must be above sleep_min_s")
        return self

    @field_validator("cgroup_slice")
    @classmethod
    def _relative_slice(cls, path: str) -> str:
        parts = Path(path).parts
        if not parts or Path(path).is_absolute() or ".." in parts:
            raise ValueError("a path under the cgroup mount, like "
                             "edgeagent.slice/edgeagent-workloads.slice")
        return path


class Config(Section):
    site: SiteConfig = Field(default_factory=SiteConfig)
    power: PowerConfig = Field(default_factory=PowerConfig)
    battery: BatteryConfig = Field(default_factory=BatteryConfig)
    governor: GovernorConfig = Field(default_factory=GovernorConfig)
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    actuators: ActuatorConfig = Field(default_factory=ActuatorConfig)

    @model_validator(mode="after")
    def _max_workers_fit_board(self) -> Config:
        board = self.site.profile()
        if self.governor.max_workers > board.cores:
            raise ValueError(
                f"governor.max_workers: {self.governor.max_workers} exceeds the "
                f"{board.cores} cores of board {board.name!r}"
            )
        return self

    @model_validator(mode="after")
    def _planned_sleeps_are_taken(self) -> Config:
        """The governor plans no sleep shorter than its ``min_sleep_s``; the actuator refuses
        one shorter than its ``sleep_min_s``: plans the actuator would always refuse are a
        misconfiguration, not a run-time surprise."""
        if (self.governor.allow_sleep and self.actuators.sleep
                and self.governor.min_sleep_s < self.actuators.sleep_min_s + SLEEP_SLACK_S):
            raise ValueError(
                f"actuators.sleep_min_s: {self.actuators.sleep_min_s:g} s leaves less than "
                f"{SLEEP_SLACK_S:g} s below governor.min_sleep_s "
                f"({self.governor.min_sleep_s:g} s): the governor would plan sleeps this "
                "actuator refuses; lower it or raise governor.min_sleep_s")
        return self


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, with the dotted path of the field it is about."""

    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(f"{source}: " + "; ".join(str(i) for i in issues))


def _model_at(path: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that owns the field at ``path``: to list the keys an unknown key could be."""
    model: type[BaseModel] = Config
    for part in path:
        if isinstance(part, int):  # an element of a list of tables: same model
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _hint(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(tuple(error["loc"][:-1]))
        if owner is not None:
            return "allowed keys here: " + ", ".join(owner.model_fields)
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return "value out of range"
    if kind.endswith("_parsing") or kind.endswith("_type"):
        return f"got {error['input']!r}"
    if kind == "missing":
        return "this key is required"
    return ""


def field_errors(error: ValidationError) -> Iterator[tuple[str, str, ErrorDetails]]:
    """Each error of ``error`` as (dotted field path, message, pydantic's details)."""
    for e in error.errors():
        path = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if not path:  # a cross-field check names its field at the start of its message
            path, _, message = message.partition(": ")
        yield path, message, e


def issues_from(error: ValidationError) -> list[ConfigIssue]:
    return [ConfigIssue(path, message, _hint(dict(e)))
            for path, message, e in field_errors(error)]


def parse_config(text: str, source: str = "<config>", config_dir: Path | None = None) -> Config:
    """Validate a config's text; relative paths in it are taken from ``config_dir`` (default:
    the working directory)."""
    try:
        data = tomlfile.loads(text)
    except tomlfile.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigIssue("(file)", f"not valid TOML: {exc}")]) from exc
    try:
        return Config.model_validate(data, context={"config_dir": config_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(source, issues_from(exc)) from exc


def load_config(path: Path) -> Config:
    """Read and validate a config file; every problem is reported at once in ``ConfigError``."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(str(path), [ConfigIssue("(file)", "no such file")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("(file)", f"cannot read: {exc}")]) from exc
    return parse_config(text, str(path), path.resolve().parent)
