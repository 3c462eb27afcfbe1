"""The ``edgeagent`` command line (also ``python -m edgeagent``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgeagent import __version__

EXIT_INVALID = 2
PASSWORD_ENV = "EDGEAGENT_MQTT_PASSWORD"  # edgeagent fleet's password, when not in a file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeagent", description=(
        "Run a solar-powered micro data center on its own sun: read the charger, throttle "
        "int8 inference to the energy budget, sync telemetry over MQTT."))
    p.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the whole agent on an emulated site (no hardware needed)")
    demo.add_argument("--duration", type=float, default=60.0, metavar="S",
                      help="wall-clock seconds to run (default 60)")
    demo.add_argument("--speed", type=float, default=1440.0, metavar="X",
                      help="simulated seconds per wall second (default 1440: a day a minute)")
    demo.add_argument("--broker", metavar="URL", help="mqtt://host:port or unix:///path")
    demo.add_argument("--site", default="demo")
    demo.add_argument("--node", default="node1")
    demo.add_argument("--state-dir", type=Path, metavar="DIR",
                      help="keep the outbox here (default: a temporary directory)")
    demo.add_argument("--charger", choices=("vedirect", "epever", "renogy"), default="vedirect",
                      help="emulated charge controller (default: a SmartSolar MPPT)")
    demo.add_argument("--monitor", choices=("vedirect", "jbd", "daly"), default="vedirect",
                      help="emulated battery monitor (default: a SmartShunt)")

    run = sub.add_parser("run", help="the service (what systemd starts)")
    run.add_argument("--config", type=Path, required=True, metavar="PATH")

    install = sub.add_parser("install-service", help="install the systemd unit, its user, "
                             "rules and an example config (idempotent)")
    install.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                         help="install under DIR, files only (default /: also creates the user)")
    install.add_argument("--venv", type=Path, metavar="PATH",
                         help="the environment whose edgeagent the unit runs (default: this "
                              "one's)")
    install.add_argument("--dry-run", action="store_true", help="say what would change")

    fleet = sub.add_parser("fleet", help="live table of every site/node seen on the broker")
    fleet.add_argument("--broker", required=True, metavar="URL",
                       help="mqtt://host:port, mqtts://host:port or unix:///path")
    fleet.add_argument("--root", default="edgeagent", help="topic root (default edgeagent)")
    fleet.add_argument("--once", action="store_true",
                       help="print one snapshot after --window seconds and exit")
    fleet.add_argument("--json", action="store_true", help="the table as one JSON array")
    fleet.add_argument("--window", type=float, default=15.0, metavar="S",
                       help="seconds of listening before a snapshot (default 15: more than "
                            "the default telemetry interval)")
    fleet.add_argument("--username", metavar="NAME", help="the broker user name")
    fleet.add_argument("--password-file", type=Path, metavar="FILE",
                       help="file holding the broker password (trailing newline ignored); or "
                            f"the environment variable {PASSWORD_ENV}; never an option: it "
                            "would show in ps")
    fleet.add_argument("--ca-file", type=Path, metavar="FILE",
                       help="mqtts://: CA that signed the broker's certificate (default: the "
                            "system's CA store)")
    fleet.add_argument("--cert-file", type=Path, metavar="FILE",
                       help="mqtts://: client certificate (PEM), for mutual TLS")
    fleet.add_argument("--key-file", type=Path, metavar="FILE",
                       help="mqtts://: client key (PEM; default: inside --cert-file)")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("path", type=Path, metavar="PATH")

    read = sub.add_parser("read", help="read a real device and print normalized readings")
    read.add_argument("--driver", required=True, help="vedirect, jbd, daly, epever or renogy")
    read.add_argument("--port", required=True, metavar="P",
                      help="serial port; prefer /dev/serial/by-id/...")
    read.add_argument("--baud", type=int, metavar="N", help="default: the protocol's")
    read.add_argument("--unit", type=int, default=1, metavar="N", help="Modbus unit id")
    read.add_argument("--count", type=int, default=1, metavar="N")
    read.add_argument("--timeout", type=float, default=10.0, metavar="S")
    read.add_argument("--json", action="store_true", help="one JSON object per line")

    probe = sub.add_parser("probe", help="find which supported device answers on which port")
    probe.add_argument("--port", action="append", default=[], metavar="P",
                       help="probe only this port (repeatable); default: every serial port")
    probe.add_argument("--timeout", type=float, default=0.5, metavar="S",
                       help="answer timeout per Modbus request (default 0.5)")
    probe.add_argument("--listen", type=float, default=2.5, metavar="S",
                       help="how long to listen for VE.Direct (default 2.5)")
    probe.add_argument("--json", action="store_true", help="one JSON object per port")

    decode = sub.add_parser("decode", help="decode a captured byte stream into readings")
    decode.add_argument("--driver", required=True, help="vedirect, jbd or daly")
    decode.add_argument("file", nargs="?", type=Path, metavar="FILE",
                        help="capture file (default: standard input)")
    bench = sub.add_parser("bench", help="inference and kernel benchmark: fp32 vs int8, "
                           "compiled vs NumPy, latency, throughput, accuracy, CPU-s and J")
    bench.add_argument("--model", action="append", default=[], metavar="PATH",
                       help="a .onnx/.tflite file or bundled model name (repeatable; the first "
                       "is the baseline); default: every bundled model")
    bench.add_argument("--data", type=Path, metavar="NPZ",
                       help="inputs (x) and labels (y) for models that do not take digits")
    bench.add_argument("--board", default="raspberry-pi-4",
                       help="board profile for estimated joules (default raspberry-pi-4)")
    bench.add_argument("--rounds", type=int, default=5, metavar="N",
                       help="interleaved rounds; figures are medians (default 5)")
    bench.add_argument("--budget", type=float, default=0.1, metavar="S",
                       help="seconds of calls per measurement and round (default 0.1)")
    bench.add_argument("--duty-calls", type=int, default=100, metavar="N",
                       help="duty-cycled single inferences per round (default 100)")
    bench.add_argument("--threads", type=int, default=1, metavar="N",
                       help="intra-op threads per model, as workload.threads_per_worker "
                       "(default 1); shows whether extra threads spin")
    bench.add_argument("--energy-window", type=float, default=10.0, metavar="S",
                       help="idle and busy window per model with a power sensor (default 10)")
    bench.add_argument("--sensor-root", type=Path, default=Path("/"), metavar="DIR",
                       help="filesystem root to look for power sensors under (default /)")
    bench.add_argument("--no-kernels", action="store_true", help="skip the kernel comparison")
    bench.add_argument("--json", action="store_true", help="one JSON object")

    quantize = sub.add_parser("quantize", help="int8 static quantization (QDQ) of an ONNX "
                              "model, with an accuracy and speed report")
    quantize.add_argument("input", type=Path, metavar="IN", help="float32 ONNX model")
    quantize.add_argument("output", type=Path, metavar="OUT", help="int8 ONNX model to write")
    quantize.add_argument("--calibration", type=Path, required=True, metavar="DATA",
                          help=".npy (first axis: samples), .npz (inputs 'x', optional labels "
                          "'y') or a folder of images (one subfolder per class: labeled)")
    quantize.add_argument("--per-channel", action="store_true",
                          help="per-channel weight scales (better accuracy, slightly larger)")
    quantize.add_argument("--labels", type=Path, metavar="FILE",
                          help=".npy of integer labels for .npy calibration data")
    quantize.add_argument("--activations", choices=("int8", "uint8"), default="int8",
                          help="activation type (default int8, best on ARM)")
    quantize.add_argument("--method", choices=("minmax", "entropy", "percentile"),
                          default="minmax", help="calibration method (default minmax)")
    quantize.add_argument("--samples", type=int, default=256, metavar="N",
                          help="at most N calibration samples, a seeded subset (default 256)")
    quantize.add_argument("--mean", metavar="M[,M,M]",
                          help="images: per-channel mean of pixel/255 to subtract")
    quantize.add_argument("--std", metavar="S[,S,S]",
                          help="images: per-channel standard deviation to divide by")
    quantize.add_argument("--json", action="store_true", help="the report as one JSON object")

    simulate = sub.add_parser("simulate", help="a year of sun through the site's battery and "
                              "board under the governor, baselines and an offline oracle")
    source = simulate.add_mutually_exclusive_group()
    source.add_argument("--trace", type=Path, metavar="CSV",
                        help="columns timestamp (ISO 8601, UTC) and ghi (W/m², optional "
                        "temp_air °C) or pv_w (W)")
    source.add_argument("--site", metavar="NAME", help="a typical year bundled with pvlib: "
                        "sand-point, greensboro or miami (default greensboro)")
    simulate.add_argument("--lat", type=float, dest="latitude", metavar="DEG",
                          help="the trace's latitude (the governor's forecast needs it)")
    simulate.add_argument("--lon", type=float, dest="longitude", metavar="DEG",
                          help="the trace's longitude, east positive")
    simulate.add_argument("--start", metavar="WHEN", help="ISO 8601 date or time, UTC "
                          "(default: the trace's first timestamp; a site's January 1st)")
    simulate.add_argument("--days", type=float, metavar="N",
                          help="default: the rest of the trace; a site's whole year")
    simulate.add_argument("--step-min", type=float, default=10.0, metavar="MIN",
                          help="simulation step (default 10)")
    simulate.add_argument("--panel-wp", type=float, metavar="W",
                          help="panel rating for ghi traces (default 100)")
    simulate.add_argument("--battery-wh", type=float, default=240.0, metavar="WH",
                          help="battery capacity (default 240)")
    simulate.add_argument("--battery-chem", choices=("lifepo4", "leadacid"), default="lifepo4")
    simulate.add_argument("--reserve-pct", type=float, metavar="PCT",
                          help="battery reserve (default: 20 LiFePO4, 50 lead-acid)")
    simulate.add_argument("--initial-soc", type=float, default=100.0, metavar="PCT",
                          help="battery charge at the start (default 100)")
    simulate.add_argument("--board", default="raspberry-pi-4",
                          help="board profile (default raspberry-pi-4)")
    simulate.add_argument("--policy", choices=("always-on", "threshold", "governor", "oracle",
                                               "all"), default="all",
                          help="policy to simulate; the oracle always runs too (default all)")
    simulate.add_argument("--jobs-per-day", type=float, default=4.0, metavar="N",
                          help="deferrable jobs a day in the simulated job stream (default 4; "
                               "0: none)")
    simulate.add_argument("--json", action="store_true", help="the report as one JSON object")
    simulate.add_argument("--plot", type=Path, metavar="PNG",
                          help="write PV, battery charge and work level over time")
    return p


def _bench(args: argparse.Namespace) -> int:
    from edgeagent.boards import load_board
    from edgeagent.infer.bench import BenchOptions, print_report, run_bench, write_json
    from edgeagent.infer.energy import find_meter

    if min(args.rounds, args.duty_calls, args.threads) < 1 or min(args.budget,
                                                                 args.energy_window) <= 0:
        print("edgeagent bench: --rounds, --budget, --duty-calls, --threads and "
              "--energy-window must be positive", file=sys.stderr)
        return EXIT_INVALID
    try:
        board = load_board(args.board)
    except KeyError as exc:
        print(f"edgeagent bench: --board: {exc.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    meter = find_meter(args.sensor_root)
    options = BenchOptions(rounds=args.rounds, budget_s=args.budget, duty_calls=args.duty_calls,
                           threads=args.threads, data=args.data, kernels=not args.no_kernels,
                           energy_idle_s=args.energy_window,
                           **({"models": tuple(args.model)} if args.model else {}))
    try:
        report = run_bench(options, board, meter,
                           progress=lambda msg: print(f"bench: {msg}", file=sys.stderr,
                                                      flush=True))
    except (OSError, ValueError, ImportError, KeyError) as exc:
        print(f"edgeagent bench: {exc}", file=sys.stderr)
        return EXIT_INVALID
    (write_json if args.json else print_report)(report, sys.stdout)
    return 0


def _fleet(args: argparse.Namespace) -> int:
    """The options become a ``[telemetry]`` section, validated as the agent's own config is:
    a problem is named by its field there (``telemetry.tls.key_file: ...``)."""
    from pydantic import ValidationError

    from edgeagent.config import TelemetryConfig, field_errors
    from edgeagent.telemetry.fleet import run_fleet

    if args.window <= 0:
        print("edgeagent fleet: --window must be positive", file=sys.stderr)
        return EXIT_INVALID
    if args.password_file is not None and args.username is None:
        print("edgeagent fleet: --password-file needs --username", file=sys.stderr)
        return EXIT_INVALID
    tls = {name: path for name, path in (("ca_file", args.ca_file),
                                         ("cert_file", args.cert_file),
                                         ("key_file", args.key_file)) if path is not None}
    password = os.environ.get(PASSWORD_ENV) if args.password_file is None else None
    try:  # one dict, so that a TLS option's error carries its whole path
        telemetry = TelemetryConfig.model_validate({
            "broker": args.broker, "topic_root": args.root, "username": args.username,
            "password": password if args.username is not None else None,
            "password_file": args.password_file, "tls": tls or None})
    except ValidationError as exc:
        for field, message, _ in field_errors(exc):
            print(f"edgeagent fleet: telemetry.{field}: {message}", file=sys.stderr)
        return EXIT_INVALID
    return run_fleet(telemetry, once=args.once, as_json=args.json, window_s=args.window)


def _config_check(path: Path) -> int:
    from edgeagent.config import ConfigError, load_config

    try:
        load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.issues)} error(s)", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{path}: ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        return _config_check(args.path)
    if args.command == "demo":
        from edgeagent.demo import DemoOptions, run_demo

        if args.duration <= 0 or args.speed <= 0:
            print("edgeagent demo: --duration and --speed must be positive", file=sys.stderr)
            return EXIT_INVALID
        if args.broker is not None:
            from edgeagent.telemetry.address import BrokerAddress

            try:
                BrokerAddress.parse(args.broker)
            except ValueError as exc:
                print(f"edgeagent demo: --broker {exc}", file=sys.stderr)
                return EXIT_INVALID
        return run_demo(DemoOptions(duration_s=args.duration, speed=args.speed,
                                    broker=args.broker, site=args.site, node=args.node,
                                    state_dir=args.state_dir, charger=args.charger,
                                    monitor=args.monitor))
    if args.command == "fleet":
        return _fleet(args)
    if args.command == "run":
        from edgeagent.config import ConfigError, load_config
        from edgeagent.service import run_service

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for issue in exc.issues:
                print(f"{exc.source}: {issue}", file=sys.stderr)
            return EXIT_INVALID
        return run_service(config, path=args.config)
    if args.command == "install-service":
        from edgeagent.install import install

        return install(args.root, args.venv, args.dry_run)
    if args.command == "read":
        from edgeagent.power.read import ReadOptions, run_read

        if args.count < 1 or args.timeout <= 0:
            print("edgeagent read: --count and --timeout must be positive", file=sys.stderr)
            return EXIT_INVALID
        return run_read(ReadOptions(args.driver, args.port, args.baud, args.unit, args.count,
                                    args.timeout), args.json, sys.stdout, sys.stderr)
    if args.command == "probe":
        from edgeagent.power.probe import run_probe

        if args.timeout <= 0 or args.listen <= 0:
            print("edgeagent probe: --timeout and --listen must be positive", file=sys.stderr)
            return EXIT_INVALID
        return run_probe(args.port, args.json, sys.stdout, sys.stderr, listen_s=args.listen,
                         timeout_s=args.timeout)
    if args.command == "bench":
        return _bench(args)
    if args.command == "decode":
        from edgeagent.power.decode import run_decode

        try:
            source = sys.stdin.buffer if args.file is None else args.file.open("rb")
        except OSError as exc:
            print(f"edgeagent decode: {exc}", file=sys.stderr)
            return EXIT_INVALID
        try:
            with source:
                return run_decode(args.driver, source, sys.stdout, sys.stderr)
        except BrokenPipeError:  # `edgeagent decode ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if args.command == "quantize":
        from edgeagent.infer.quantize import (
            QuantizeError,
            QuantizeFailed,
            QuantizeOptions,
            format_report,
            parse_channel_values,
            quantize_model,
        )

        try:
            options = QuantizeOptions(
                per_channel=args.per_channel, activations=args.activations,
                method=args.method, samples=args.samples, labels=args.labels,
                mean=parse_channel_values(args.mean, "--mean"),
                std=parse_channel_values(args.std, "--std"))
            report = quantize_model(args.input, args.output, args.calibration, options)
        except QuantizeError as exc:
            print(f"edgeagent quantize: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except QuantizeFailed as exc:
            print(f"edgeagent quantize: {exc}", file=sys.stderr)
            return 1
        print(report.to_json() if args.json else format_report(report))
        return 0
    if args.command == "simulate":
        from edgeagent.sim.simulate import SimulateOptions, run_simulate

        return run_simulate(SimulateOptions(
            trace=args.trace, site=args.site, latitude=args.latitude, longitude=args.longitude,
            start=args.start, days=args.days, step_min=args.step_min, panel_wp=args.panel_wp,
            battery_wh=args.battery_wh, battery_chem=args.battery_chem,
            reserve_pct=args.reserve_pct, initial_soc_pct=args.initial_soc, board=args.board,
            policy=args.policy, json=args.json, plot=args.plot,
            jobs_per_day=args.jobs_per_day), sys.stdout, sys.stderr)
    raise AssertionError(args.command)
