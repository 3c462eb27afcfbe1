"""The board's own power sensors: Linux hwmon (INA219/INA226/INA3221, Jetson rails), the Jetson
Nano's INA3221 IIO driver, and the Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``).

Every reader takes a root path (or a command runner) so tests point it at a temporary sysfs tree
or a captured output. Facts and calibrations: research/energy-aware-scheduling.md §5.2.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

INA_HWMON_NAMES = ("ina219", "ina226", "ina230", "ina231", "ina3221")
# Rails that are the board's total input, by the labels the drivers give them.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
# Pi 5: a community fit of the PMIC rail sum against a USB meter (github.com/jfikar/RPi5-power).
PMIC_GAIN, PMIC_OFFSET_W = 1.1451, 0.5879


@dataclass(frozen=True)
class BoardPower:
    """Board power now; ``rails`` holds each measured rail's watts by its label."""

    power_w: float
    source: str
    rails: dict[str, float] = field(default_factory=dict)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _hwmon_rails(device: Path) -> dict[str, float]:
    """Watts per channel of one hwmon device: ``powerN_input`` (uW) where the driver has it,
    else bus voltage (``inN_input``, mV) times current (``currN_input``, mA)."""
    rails: dict[str, float] = {}
    for curr in sorted(device.glob("curr*_input")):
        n = curr.name[4:-6]
        label_file = device / f"in{n}_label"
        label = label_file.read_text().strip() if label_file.exists() else f"{device.name}/{n}"
        if "sum" in label.lower():
            continue  # the INA3221's "sum of shunt voltages" channel is not a rail
        micro_watts = _read_int(device / f"power{n}_input")
        if micro_watts is not None:
            rails[label] = micro_watts / 1e6
            continue
        milli_volts, milli_amps = _read_int(device / f"in{n}_input"), _read_int(curr)
        if milli_volts is not None and milli_amps is not None:
            rails[label] = milli_volts * milli_amps / 1e6
    return rails


def read_hwmon(root: Path = Path("/")) -> BoardPower | None:
    """INA2xx/INA3221 sensors under ``root/sys/class/hwmon``; None when there are none.

    The hwmon index changes between boots, so devices are found by ``name``, never by number.
    When a rail is the board's total input (Jetson ``VDD_IN``), it is the board's power;
    otherwise the rails are summed.
    """
    rails: dict[str, float] = {}
    for device in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        name_file = device / "name"
        if name_file.exists() and name_file.read_text().strip() in INA_HWMON_NAMES:
            rails.update(_hwmon_rails(device))
    if not rails:
        return None
    total = next((rails[r] for r in TOTAL_RAILS if r in rails), sum(rails.values()))
    return BoardPower(round(total, 3), "hwmon", rails)


def read_jetson_nano_iio(root: Path = Path("/")) -> BoardPower | None:
    """The Jetson Nano's INA3221 under NVIDIA's IIO driver (L4T 32): ``in_powerN_input`` (mW)
    with ``rail_name_N``; ``POM_5V_IN`` is the module's input."""
    rails: dict[str, float] = {}
    for device in sorted((root / "sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*")):
        for power in sorted(device.glob("in_power*_input")):
            n = power.name[len("in_power"):-len("_input")]
            name_file = device / f"rail_name_{n}"
            label = name_file.read_text().strip() if name_file.exists() else f"rail{n}"
            milli_watts = _read_int(power)
            if milli_watts is not None:
                rails[label] = milli_watts / 1000
    if not rails:
        return None
    total = next((rails[r] for r in TOTAL_RAILS if r in rails), sum(rails.values()))
    return BoardPower(round(total, 3), "ina3221-iio", rails)


_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-\d.eE+]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> BoardPower | None:
    """``vcgencmd pmic_read_adc`` output to calibrated board watts.

    Rails with both a current (``X_A``) and a voltage (``X_V``) line are multiplied and summed;
    the sum under-reads (it misses the 5 V branch), hence the calibration. Lines in other
    formats (firmware changes them) are ignored rather than trusted.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = {name: amps[name] * volts[name] for name in amps if name in volts}
    if not rails:
        return None
    return BoardPower(round(PMIC_GAIN * sum(rails.values()) + PMIC_OFFSET_W, 3), "pmic", rails)


def read_pi5_pmic(run: Callable[[list[str]], str] | None = None) -> BoardPower | None:
    """Raspberry Pi 5 PMIC via vcgencmd; None where vcgencmd is missing or fails."""
    def default_run(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout

    try:
        return parse_pmic_adc((run or default_run)(["vcgencmd", "pmic_read_adc"]))
    except (OSError, subprocess.SubprocessError):
        return None
