"""The ``edgeagent`` command line (also ``python -m edgeagent``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgeagent import __version__

EXIT_INVALID = 2


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
    return p


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
    if args.command == "run":
        from edgeagent.config import ConfigError, load_config
        from edgeagent.service import run_service

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for issue in exc.issues:
                print(f"{exc.source}: {issue}", file=sys.stderr)
            return EXIT_INVALID
        return run_service(config)
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
    raise AssertionError(args.command)
