"""A short soak (the hour-long one is ``benchmarks/soak.py``): ``edgeagent run`` on emulated
serial devices under broker kills and unplugged cables keeps its memory, file descriptors,
threads and outbox bounded, and its watchdog pings never lapse."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conftest import Broker

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_resources_stay_flat_through_broker_kills_and_unplugs(broker: Broker,
                                                              tmp_path: Path) -> None:
    soak = load_soak()
    schedule = soak.Schedule(broker_every=(8.0, 12.0), broker_down=(2.0, 4.0),
                             unplug_every=(5.0, 8.0), unplug_for=(1.5, 3.0))
    report = soak.run_soak(broker, tmp_path, 60.0, sample_s=1.0, schedule=schedule,
                           watchdog_s=10.0, log=lambda line: None)
    summary = report.summary()
    assert report.failures == [], summary
    assert report.broker_kills >= 3 and report.unplugs + report.silences >= 5, summary
    assert summary["watchdog"]["ready"] and summary["watchdog"]["pings"] >= 10, summary
    assert report.telemetry_seen > 0
