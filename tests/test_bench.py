"""`edgeagent bench`: its output format (the numbers themselves are measured, not tested)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from conftest import edgeagent_command

QUICK = ["--rounds", "1", "--budget", "0.01", "--duty-calls", "10"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "bench", *QUICK, *args],
                          capture_output=True, text=True, timeout=300)


def test_json_report_has_every_figure_per_model_and_the_ratios() -> None:
    done = bench("--model", "digits-fp32", "--model", "digits-int8", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["board"] == "raspberry-pi-4" and report["threads"] == 1
    assert {"python", "machine", "numpy", "onnxruntime", "kernels_compiled"} <= \
        report["machine"].keys()
    fp32, int8 = report["models"]
    assert (fp32["name"], fp32["precision"], int8["precision"]) == ("digits-fp32", "fp32", "int8")
    for model in (fp32, int8):
        assert model["runtime"] == "onnxruntime"
        assert 0.9 < model["accuracy"] <= 1
        assert 0 < model["latency_us_median"] <= model["latency_us_p90"]
        assert set(model["throughput_per_s"]) == {"64", "540"}
        assert model["duty_cpu_s_per_inference"] >= 0 and model["duty_latency_us"] > 0
        assert model["joules"]["basis"] == "estimated"
        assert model["joules"]["per_inference_j"] >= 0
        assert set(model["batch_j_per_inference"]) == {"64", "540"}
    assert fp32["vs"] is None  # the first model is the baseline
    vs = int8["vs"]
    assert vs["baseline"] == "digits-fp32" and vs["size_x"] > 1
    assert set(vs["throughput_x"]) == {"64", "540"}
    assert abs(vs["accuracy_drop_pt"]) < 2
    kernels = {(k["name"], k["size"]): k for k in report["kernels"]}
    assert {"quantize", "softmax_topk", "resize_normalize_quantize", "window_features"} <= \
        {name for name, _ in kernels}
    for k in kernels.values():
        assert k["fallback_s"] > 0
        if report["machine"]["kernels_compiled"]:
            assert k["bit_exact"] is True and k["ratio"] > 0


def test_text_report_is_a_table_with_the_energy_basis() -> None:
    done = bench("--model", "digits-fp32", "--model", "digits-int8", "--no-kernels")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    header = (r"^model +runtime +size +acc +b1 med +p90 +b64/s +b540/s +duty +cpu/lat +J b1"
              r" +J b540$")
    assert re.search(header, out, re.MULTILINE), out
    assert re.search(r"^digits-int8 +onnxruntime +\d+kB +[\d.]+% +[\d.]+us", out, re.MULTILINE)
    assert re.search(r"digits-int8 +vs digits-fp32 +latency [\d.]+x  b64 [\d.]+x  b540 [\d.]+x"
                     r"  size [\d.]+x  accuracy drop [-+][\d.]+ pt", out), out
    assert "J b1 estimated: per inference: CPU-s x 0.925 W per busy core" in out
    assert ("J b540 estimated: raspberry-pi-4 watts per busy core x threads / inferences per "
            "second") in out
    assert "round 1/1" in done.stderr  # progress goes to stderr, the report to stdout


def test_a_board_power_sensor_turns_estimates_into_measurements(tmp_path: Path) -> None:
    device = tmp_path / "sys/class/hwmon/hwmon0"
    device.mkdir(parents=True)
    for name, value in (("name", "ina226"), ("in1_input", "5000"), ("curr1_input", "600")):
        (device / name).write_text(value + "\n")
    done = bench("--model", "digits-int8", "--no-kernels", "--json", "--sensor-root",
                 str(tmp_path), "--energy-window", "0.5")
    assert done.returncode == 0, done.stderr
    joules = json.loads(done.stdout)["models"][0]["joules"]
    assert joules["basis"] == "measured" and joules["detail"].startswith("hwmon: ")
    # A constant 3 W sensor: the gross energy is all idle power, the net about none of it.
    assert joules["gross_j"] > 0 and abs(joules["per_inference_j"]) < joules["gross_j"]


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    missing = bench("--model", str(tmp_path / "nope.onnx"), "--no-kernels")
    assert missing.returncode == 2 and "no ONNX model at" in missing.stderr
    wrong = bench("--model", str(tmp_path), "--no-kernels")
    assert wrong.returncode == 2 and "unknown model format" in wrong.stderr
    board = bench("--board", "pi-zero", "--no-kernels")
    assert board.returncode == 2 and "known boards" in board.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr + board.stderr


def test_an_int8_model_is_compared_with_its_fp32_sibling_whatever_the_order() -> None:
    done = bench("--model", "digits-large-int8", "--model", "digits-large-fp32",
                 "--model", "digits-int8-tflite", "--no-kernels", "--json", "--threads", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["threads"] == 2
    vs = {m["name"]: m["vs"] and m["vs"]["baseline"] for m in report["models"]}
    # The fp32 sibling when it is there; else the first model given.
    assert vs == {"digits-large-int8": "digits-large-fp32",
                  "digits-large-fp32": "digits-large-int8",
                  "digits-int8-tflite": "digits-large-int8"}


def test_bad_data_names_what_is_wrong(tmp_path: Path) -> None:
    cases = {"no-x.npz": ({"inputs": np.zeros((4, 64), np.float32)}, "no array 'x'"),
             "empty.npz": ({"x": np.zeros((0, 64), np.float32)}, "'x' holds no samples"),
             "labels.npz": ({"x": np.zeros((4, 64), np.float32), "y": np.zeros(3, np.int64)},
                            "one label per sample"),
             "shape.npz": ({"x": np.zeros((4, 63), np.float32)}, "expects shape")}
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)  # type: ignore[arg-type]
        done = bench("--model", "digits-int8", "--no-kernels", "--data", str(tmp_path / name))
        assert done.returncode == 2 and message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr
