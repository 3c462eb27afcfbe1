"""Board power sensors from temporary sysfs trees and captured vcgencmd output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeagent.power.board_power import (
    parse_pmic_adc,
    read_hwmon,
    read_jetson_nano_iio,
    read_pi5_pmic,
)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_ina219_on_a_pi_is_found_by_name_not_index(tmp_path: Path) -> None:
    write(tmp_path, {
        "sys/class/hwmon/hwmon0/name": "cpu_thermal",  # not a power sensor
        "sys/class/hwmon/hwmon0/temp1_input": "45000",
        "sys/class/hwmon/hwmon3/name": "ina219",
        "sys/class/hwmon/hwmon3/in1_input": "5120",  # mV
        "sys/class/hwmon/hwmon3/curr1_input": "812",  # mA
        "sys/class/hwmon/hwmon3/power1_input": "4157000",  # uW: preferred when present
    })
    power = read_hwmon(tmp_path)
    assert power is not None and power.power_w == 4.157 and power.source == "hwmon"


def test_jetson_orin_ina3221_uses_vdd_in_as_the_board_total(tmp_path: Path) -> None:
    base = "sys/class/hwmon/hwmon1/"
    write(tmp_path, {
        base + "name": "ina3221",
        base + "in1_label": "VDD_IN", base + "in1_input": "5040", base + "curr1_input": "1350",
        base + "in2_label": "VDD_CPU_GPU_CV", base + "in2_input": "5040",
        base + "curr2_input": "420",
        base + "in3_label": "VDD_SOC", base + "in3_input": "5040", base + "curr3_input": "300",
        base + "in7_label": "sum of shunt voltages", base + "curr7_input": "999",
    })
    power = read_hwmon(tmp_path)
    assert power is not None
    assert power.power_w == pytest.approx(5.04 * 1.35, abs=1e-3)
    assert set(power.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_no_sensor_is_none_not_zero(tmp_path: Path) -> None:
    write(tmp_path, {"sys/class/hwmon/hwmon0/name": "cpu_thermal"})
    assert read_hwmon(tmp_path) is None
    assert read_jetson_nano_iio(tmp_path) is None


def test_jetson_nano_iio_rails(tmp_path: Path) -> None:
    base = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/"
    write(tmp_path, {
        base + "rail_name_0": "POM_5V_IN", base + "in_power0_input": "3120",
        base + "rail_name_1": "POM_5V_GPU", base + "in_power1_input": "80",
        base + "rail_name_2": "POM_5V_CPU", base + "in_power2_input": "610",
    })
    power = read_jetson_nano_iio(tmp_path)
    assert power is not None and power.power_w == 3.12 and power.rails["POM_5V_CPU"] == 0.61


PMIC = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.05660000A
      1V8_SYS_A current(2)=0.16000000A
     VDD_CORE_A current(7)=1.20000000A
     3V7_WL_SW_V volt(8)=3.74963000V
       3V3_SYS_V volt(9)=3.31000000V
       1V8_SYS_V volt(10)=1.79000000V
     VDD_CORE_V volt(15)=0.84000000V
        EXT5V_V volt(24)=5.14682000V
         BATT_V volt(25)=0.00000000V
   some future line we do not know
"""


def test_pi5_pmic_rails_are_summed_and_calibrated() -> None:
    power = parse_pmic_adc(PMIC)
    rail_sum = 0.00390372 * 3.74963 + 0.0566 * 3.31 + 0.16 * 1.79 + 1.2 * 0.84
    assert power is not None and power.source == "pmic"
    assert power.power_w == pytest.approx(1.1451 * rail_sum + 0.5879, abs=1e-3)
    assert "EXT5V" not in power.rails  # a voltage without a current is not a rail


def test_pi5_pmic_missing_vcgencmd_is_none() -> None:
    def missing(cmd: list[str]) -> str:
        raise FileNotFoundError(cmd[0])

    def failing(cmd: list[str]) -> str:
        raise subprocess.CalledProcessError(1, cmd)

    assert read_pi5_pmic(missing) is None and read_pi5_pmic(failing) is None
    assert read_pi5_pmic(lambda cmd: PMIC) is not None
    assert parse_pmic_adc("garbage\n") is None
