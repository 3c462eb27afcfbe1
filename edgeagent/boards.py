"""Board profiles: what a board draws and which knobs it has, loaded from ``boards/*.toml``.

The TOML files are installed as package data (``edgeagent.board_profiles``), so a site picks its
board by name in the config and a non-editable install still finds them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeagent import tomlfile

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


class PowerSensor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "vcgencmd_pmic", "ina3221_iio", "ina3221_hwmon"]
    calibration: dict[str, float] | None = None
    note: str = ""


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpufreq: bool
    cgroup: bool
    nvpmodel: bool
    power_modes_w: list[float] = Field(default_factory=list)


class Detect(BaseModel):
    """How ``board_detect`` recognises the board: its device-tree ``compatible`` strings, and
    for a Jetson whose device tree is hidden the L4T major releases that run on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compatible: list[str] = Field(default_factory=list)
    l4t_releases: list[int] = Field(default_factory=list)


class BoardProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    cores: int = Field(gt=0)
    idle_w: float = Field(gt=0)
    full_load_w: float = Field(gt=0)
    # Halted behind a switched-off load output the board draws nothing; what stays on is the
    # timer that wakes it (an RTC, or the charger's load timer). Counted as zero work.
    sleep_w: float = Field(default=0.1, ge=0)
    serial_ports: list[str]
    power_sensor: PowerSensor
    knobs: Knobs
    detect: Detect = Field(default_factory=Detect)

    @model_validator(mode="after")
    def _full_above_idle(self) -> BoardProfile:
        if self.full_load_w <= self.idle_w:
            raise ValueError("full_load_w must be above idle_w")
        return self

    def load_w(self, busy_cores: float) -> float:
        """Board power with ``busy_cores`` cores busy: linear between idle and full load."""
        share = min(max(busy_cores / self.cores, 0.0), 1.0)
        return self.idle_w + share * (self.full_load_w - self.idle_w)

    @property
    def watts_per_core(self) -> float:
        """Marginal power of one fully busy core: the cost the governor pays per worker."""
        return (self.full_load_w - self.idle_w) / self.cores


def _profiles_dir() -> Traversable:
    try:
        return resources.files("edgeagent.board_profiles")
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return Path(__file__).resolve().parent.parent / "boards"


def available_boards() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in _profiles_dir().iterdir()
                  if p.name.endswith(".toml"))


def load_board(name: str) -> BoardProfile:
    """Load a profile by name; ``KeyError`` names the boards that exist."""
    path = _profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise KeyError(f"unknown board {name!r}; known boards: {', '.join(available_boards())}")
    return BoardProfile.model_validate(tomlfile.loads(path.read_text()))
