"""`edgeagent config check`: exit 0 for a valid file; exit 2 naming every error by field path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import edgeagent_command
from edgeagent.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "systemd" / "edgeagent.toml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_annotated_example_config_is_valid() -> None:
    result = check(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    config = load_config(EXAMPLE)
    assert config.power.devices[0].driver == "vedirect"


def test_a_broken_config_reports_every_error_with_its_field_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[site]\nid = "s1"\ncolour = "blue"\n'          # unknown key
        '[battery]\nreserve_soc_pct = 150\n'            # out of range
        'capacity_wh = "large"\n'                      # wrong type
        '[telemetry]\nbroker = "http://example"\n'     # bad URL scheme
    )
    result = check(broken)
    assert result.returncode == 2
    err = result.stderr
    assert "4 error(s)" in err
    assert "site.colour" in err and "allowed keys here: id, node, board" in err
    assert "battery.reserve_soc_pct" in err and "less than or equal to 95" in err
    assert "battery.capacity_wh" in err and "'large'" in err
    assert "telemetry.broker" in err


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.toml")
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_toml_is_reported_with_its_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nid = 1\n")
    result = check(bad)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line 1" in result.stderr


def test_defaults_are_safe() -> None:
    config = Config()
    assert config.battery.reserve_soc_pct >= 5
    assert not config.actuators.cpufreq and not config.actuators.cgroup
    assert config.telemetry.broker is None


def test_a_broker_url_that_cannot_connect_is_refused_here_not_at_run_time() -> None:
    for url in ("mqtt://", "mqtt://h:99999", "ftp://h"):
        with pytest.raises(ConfigError) as err:
            parse_config(f'[telemetry]\nbroker = "{url}"\n')
        assert err.value.issues[0].path == "telemetry.broker"


def test_an_unknown_key_in_a_device_table_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[[power.devices]]\nport = "/dev/ttyUSB0"\nspeed = 9600\n')
    issue = err.value.issues[0]
    assert issue.path == "power.devices.0.speed" and "driver, port, baud" in issue.hint


def test_reserve_cannot_be_turned_off() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[battery]\nreserve_soc_pct = 0\n")
    assert [i.path for i in err.value.issues] == ["battery.reserve_soc_pct"]


def test_workers_beyond_the_boards_cores_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[site]\nboard = "raspberry-pi-4"\n[governor]\nmax_workers = 5\n')
    assert err.value.issues[0].path == "governor.max_workers"


def test_an_unknown_board_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[site]\nboard = "pi-zero"\n')
    assert "raspberry-pi-5" in err.value.issues[0].message


def test_a_model_is_a_bundled_name_or_an_existing_model_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.onnx").write_bytes(b"not checked here: the service loads it at start")
    path = tmp_path / "edgeagent.toml"
    path.write_text('[workload]\nmodel = "mine.onnx"\n'
                    '[[workload.fallbacks]]\nmodel = "digits-int8-tflite"\n'
                    'below_budget_w = 2.5\n')
    monkeypatch.chdir("/")  # as under systemd: relative to the config file, not to the cwd
    config = load_config(path)
    assert config.workload.models() == [str(tmp_path / "mine.onnx"), "digits-int8-tflite"]
    with pytest.raises(ConfigError) as err:
        parse_config('[workload]\nmodel = "digits-int4"\n'
                     f'[[workload.fallbacks]]\nmodel = "{tmp_path / "gone.tflite"}"\n'
                     'below_budget_w = 1\n')
    issues = {i.path: i.message for i in err.value.issues}
    assert "bundled model (digits-fp32" in issues["workload.model"]
    assert "no model file at" in issues["workload.fallbacks.0.model"]


@pytest.mark.parametrize(("fallbacks", "message"), [
    ([("digits-int8", 2), ("digits-fp32", 2)], "each needs its own below_budget_w"),
    ([("digits-int8-tflite", 2), ("digits-int8-tflite", 1)], "a model of its own"),
    ([("digits-int8", 2)], "other than `model`"),
])
def test_fallbacks_differ_from_each_other_and_from_the_model(
        fallbacks: list[tuple[str, float]], message: str) -> None:
    text = '[workload]\nmodel = "digits-int8"\n' + "".join(
        f'[[workload.fallbacks]]\nmodel = "{m}"\nbelow_budget_w = {w}\n' for m, w in fallbacks)
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.issues[0].path == "workload"
    assert message in err.value.issues[0].message
