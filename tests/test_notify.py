"""``edgeagent run`` under systemd's notify protocol: READY, STATUS, WATCHDOG (only while every
loop progresses), STOPPING on SIGTERM, RELOADING/READY on SIGHUP; a bound datagram socket in
tmp_path stands in for systemd, the agent runs in a subprocess on an emulated SmartShunt."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent_site import write_config
from conftest import Broker, Subscriber, edgeagent_command
from edgeagent.governor.decision import JobClass
from edgeagent.notify import Heartbeat, Notifier, SignalFlags, StatusLine, Watchdog, alive
from edgeagent.power.poller import PolledReader
from edgeagent.power.reader import SerialReader
from edgeagent.service import workers_check
from edgeagent.sim.emulator import VEDirectEmulator
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.workloads.jobs import JobQueue, JobSpec
from edgeagent.workloads.pool import WorkerPool
from emulated_devices import smartshunt

WATCHDOG_USEC = 3_000_000  # 3 s: pings every 0.75 s, a stuck worker found after 3 s


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram, split into its ``KEY=value`` lines."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []

    def receive(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    def wait_for(self, line: str, timeout: float = 60.0, after: int = 0) -> int:
        """Index of the first message from ``after`` on with a line starting with ``line``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.messages[after:], after):
                if any(m.startswith(line) for m in msg):
                    return i
            assert time.monotonic() < deadline, f"no {line!r} in {self.messages[-5:]}"
            self.receive(time.monotonic() + 0.5)

    def lines(self, start: int = 0) -> list[str]:
        return [line for msg in self.messages[start:] for line in msg]


@pytest.fixture
def shunt() -> Iterator[VEDirectEmulator]:
    device = smartshunt(90.0)
    yield device
    device.stop()


def start_agent(config: Path, notify_socket: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*edgeagent_command(), "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": str(WATCHDOG_USEC),
             "EDGEAGENT_PURE_KERNELS": "1", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# The protocol, in process.

def test_messages_reach_a_socket_path_and_an_abstract_name(tmp_path: Path) -> None:
    abstract = f"edgeagent-test-{uuid.uuid4().hex}"
    for address, env_value in ((str(tmp_path / "notify"), str(tmp_path / "notify")),
                               ("\0" + abstract, "@" + abstract)):
        systemd = FakeSystemd(address)
        notifier = Notifier({"NOTIFY_SOCKET": env_value}, os.getpid())
        notifier.ready()
        notifier.status("SoC 76%")
        systemd.receive(time.monotonic() + 1)
        assert systemd.messages[:2] == [["READY=1"], ["STATUS=SoC 76%"]]
        notifier.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier({}, os.getpid())
    assert not notifier.enabled and notifier.watchdog_s is None
    assert notifier.send("READY=1") is False


def test_a_watchdog_meant_for_another_process_is_ignored_and_children_inherit_nothing() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier(dict(env), os.getpid()).watchdog_s is None
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}, os.getpid()).watchdog_s == 30.0
    Notifier.from_environment(env)
    assert env == {}


def test_a_watchdog_usec_or_pid_that_is_not_a_plain_number_means_no_watchdog() -> None:
    pid = os.getpid()
    for env in ({"WATCHDOG_USEC": "\u00b2"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "0"},
                {"WATCHDOG_USEC": "3e7"}, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
                {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}):
        assert Notifier(env, pid).watchdog_s is None, env  # "²".isdigit() used to raise here


def test_a_signal_is_recorded_without_taking_a_lock_the_main_thread_may_hold() -> None:
    """The handler runs between two bytecodes of the main thread, possibly inside
    ``Event.wait``'s lock: an ``Event.set()`` there deadlocked (the old handler did that)."""
    flags, stop = SignalFlags(), threading.Event()
    previous = signal.getsignal(signal.SIGUSR1)
    flags.install([signal.SIGUSR1])
    try:
        with vars(stop)["_cond"]:  # as inside stop.wait(0.1) when the signal arrives
            signal.raise_signal(signal.SIGUSR1)
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert flags.take() == [signal.SIGUSR1, signal.SIGUSR1] and flags.take() == []


def test_a_check_that_raises_stops_the_pings_instead_of_ending_the_main_loop(
        tmp_path: Path) -> None:
    systemd = FakeSystemd(str(tmp_path / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"},
                        os.getpid())
    said: list[str] = []

    def network_alive() -> bool:
        raise AttributeError("'Client' object has no attribute '_thread'")

    watchdog = Watchdog(notifier, [alive("mqtt network", network_alive)], say=said.append)
    watchdog.poll()
    systemd.receive(time.monotonic() + 0.3)
    assert systemd.messages == [] and watchdog.stuck is not None
    assert "_thread" in watchdog.stuck and len(said) == 1


def test_a_worker_on_a_long_declared_job_is_not_stuck_and_one_on_a_batch_is(
        tmp_path: Path) -> None:
    release = threading.Event()

    class Slow:
        def classify(self, pixels_raw: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
            release.wait()
            return np.zeros((len(pixels_raw), 1), np.int64), np.ones((len(pixels_raw), 1),
                                                                     np.float32)

    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), np.uint8))
    queue = JobQueue(tmp_path / "jobs.db")
    queue.submit(JobSpec.model_validate({"class": "urgent", "model": "digits-int8",
                                         "input": "x.npy", "work_cpu_s": 100.0}), time.time())
    pool = WorkerPool(lambda model: Slow(), np.zeros((4, 8, 8), np.uint8),
                      np.zeros(4, np.int64), max_workers=1, batch_size=2, jobs=queue,
                      inputs_dir=tmp_path)
    check = workers_check(pool, queue, 0.2)
    pool.start()
    try:
        cases: list[tuple[set[JobClass], bool]] = [(set(), False), ({"urgent"}, True)]
        for admitted, running in cases:
            pool.set_admitted(admitted)
            pool.set_workers(1)
            deadline = time.monotonic() + 10
            while pool.stalled(0.2) is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert [w.running for w in queue.planned_work()] == [running]
            if running:  # 100 CPU-s declared: the job may take minutes, the worker is not stuck
                assert check() is None
            else:  # a batch of the bundled samples has no such excuse
                assert str(check()).startswith("worker-0: one batch or job for")
                pool.set_workers(0)
                release.set()  # the batch ends, the worker parks
                while pool.stalled(0.0) is not None:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                release.clear()
    finally:
        release.set()
        pool.stop()
        queue.close()


def test_status_goes_out_when_it_changes_and_no_more_often_than_the_interval(
        tmp_path: Path) -> None:
    systemd = FakeSystemd(str(tmp_path / "notify"))
    now = [0.0]
    line = StatusLine(Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}, os.getpid()),
                      min_interval_s=2.0, clock=lambda: now[0])
    for t, text in ((0.0, "a"), (0.5, "a"), (1.0, "b"), (2.5, "b"), (3.0, "b")):
        now[0] = t
        line.update(text)
    systemd.receive(time.monotonic() + 0.5)
    assert systemd.messages == [["STATUS=a"], ["STATUS=b"]]


def test_the_watchdog_pings_while_every_loop_progresses_and_stops_when_one_does_not(
        tmp_path: Path) -> None:
    systemd = FakeSystemd(str(tmp_path / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"},
                        os.getpid())
    now = [0.0]
    said: list[str] = []
    tick = Heartbeat("main loop", lambda: 2.0, clock=lambda: now[0])
    watchdog = Watchdog(notifier, [tick], clock=lambda: now[0], say=said.append)
    assert watchdog.period_s == 1.0  # a quarter of WATCHDOG_USEC: half is the most allowed
    for t in (0.0, 0.5, 1.0, 2.0):
        now[0] = t
        tick.beat()
        watchdog.poll()
    now[0] = 5.0  # no beat for 3 s
    watchdog.poll()
    now[0] = 6.0
    watchdog.poll()
    systemd.receive(time.monotonic() + 0.5)
    assert systemd.messages == [["WATCHDOG=1"]] * 3  # at 0, 1 and 2 s; none at 0.5 s
    assert watchdog.stuck == "main loop: no progress for 4 s"
    assert said == ["watchdog: main loop: no progress for 3 s: not pinging, systemd will "
                    "restart the agent"]  # once, when it happened


# What each loop's check sees, with the real threads.

def test_a_reader_whose_thread_ended_is_a_stuck_loop_and_a_silent_device_is_not(
        shunt: VEDirectEmulator) -> None:
    streaming = SerialReader(shunt.port)
    polled = PolledReader(lambda: (_ for _ in ()).throw(OSError("no device")), name="bms",
                          interval_s=0.05)
    checks = [alive("vedirect", lambda: streaming.running), alive("bms", lambda: polled.running)]
    streaming.start()
    polled.start()
    time.sleep(0.3)
    assert [c() for c in checks] == [None, None]  # the BMS answers nothing: stale, not stuck
    streaming.stop()
    polled.stop()
    assert [c() for c in checks] == ["vedirect: thread died", "bms: thread died"]


def test_a_worker_on_one_batch_past_the_deadline_is_stuck_and_a_parked_one_is_not() -> None:
    release = threading.Event()

    class Slow:
        def classify(self, pixels_raw: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
            release.wait()
            return np.zeros((len(pixels_raw), 1), np.int64), np.ones((len(pixels_raw), 1),
                                                                     np.float32)

    pool = WorkerPool(lambda model: Slow(), np.zeros((4, 8, 8), np.uint8),
                      np.zeros(4, np.int64), max_workers=2, batch_size=2)
    pool.start()
    assert pool.stalled(0.2) is None  # parked: no worker allowed yet
    pool.set_workers(1)
    deadline = time.monotonic() + 10
    while pool.stalled(0.2) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert str(pool.stalled(0.2)).startswith("worker-0: one batch or job for")
    release.set()
    time.sleep(0.1)
    pool.stop()
    assert pool.stalled(0.2) is None  # stopping is not stuck


def test_the_mqtt_check_follows_pahos_network_thread(broker: Broker) -> None:
    link = MqttLink(broker.url, Topics("edgeagent", "s1", "n1"))
    check = alive("mqtt network", link.network_alive)
    assert check() == "mqtt network: thread died"  # not started
    link.start()
    assert check() is None
    link.client.loop_stop()  # the thread ends while the agent still counts on it
    assert check() == "mqtt network: thread died"


# The service, in a subprocess.

def test_ready_then_status_then_watchdog_and_sigterm_says_stopping_and_offline(
        tmp_path: Path, broker: Broker, shunt: VEDirectEmulator) -> None:
    config = tmp_path / "edgeagent.toml"
    write_config(config, broker, shunt.port)
    systemd = FakeSystemd(str(tmp_path / "notify"))
    status = Subscriber(broker, "edgeagent/s1/n1/status")
    agent = start_agent(config, str(tmp_path / "notify"))
    try:
        ready = systemd.wait_for("READY=1")
        first_status = systemd.wait_for("STATUS=", after=ready)
        first_ping = systemd.wait_for("WATCHDOG=1", after=ready)
        assert ready < first_status < first_ping
        assert systemd.lines()[:3] == ["READY=1", systemd.lines()[1], "WATCHDOG=1"]
        connected = systemd.wait_for("STATUS=SoC 90% · level", timeout=30)
        assert "link connected" in " ".join(systemd.lines(connected))
        pings = systemd.lines(ready).count("WATCHDOG=1")
        systemd.receive(time.monotonic() + 2.0)
        assert systemd.lines(ready).count("WATCHDOG=1") >= pings + 2  # every 0.75 s
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, agent.stderr and agent.stderr.read()
        systemd.receive(time.monotonic() + 0.5)
        stopping = systemd.wait_for("STOPPING=1", timeout=1)
        assert "WATCHDOG=1" not in systemd.lines(stopping + 1)
        status.wait_for("edgeagent/s1/n1/status", lambda b: b["state"] == "offline")
    finally:
        status.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_sighup_reloads_the_config_file_between_reloading_and_ready(
        tmp_path: Path, broker: Broker, shunt: VEDirectEmulator) -> None:
    config = tmp_path / "edgeagent.toml"
    write_config(config, broker, shunt.port)
    systemd = FakeSystemd("\0" + (abstract := f"edgeagent-test-{uuid.uuid4().hex}"))
    agent = start_agent(config, "@" + abstract)
    try:
        systemd.wait_for("READY=1")
        write_config(config, broker, shunt.port, extra="[battery]\nreserve_soc_pct = 45.0")
        agent.send_signal(signal.SIGHUP)
        reloading = systemd.wait_for("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in systemd.messages[reloading])
        systemd.wait_for("READY=1", after=reloading + 1)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
        assert agent.stderr is not None
        assert "battery.reserve_soc_pct changed" in agent.stderr.read()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_a_stuck_worker_stops_the_watchdog_and_status_says_which(
        tmp_path: Path, broker: Broker, shunt: VEDirectEmulator) -> None:
    config = tmp_path / "edgeagent.toml"
    write_config(config, broker, shunt.port)
    systemd = FakeSystemd(str(tmp_path / "notify"))
    agent = start_agent(config, str(tmp_path / "notify"), EDGEAGENT_TEST_STALL="worker")
    try:
        systemd.wait_for("WATCHDOG=1")
        stuck = systemd.wait_for("STATUS=stuck: worker-", timeout=60)
        last_ping = max(i for i, m in enumerate(systemd.messages) if "WATCHDOG=1" in m)
        systemd.receive(time.monotonic() + 2 * WATCHDOG_USEC / 1e6)
        assert "WATCHDOG=1" not in systemd.lines(max(stuck, last_ping) + 1)
        assert agent.poll() is None  # systemd, not the agent, ends it
    finally:
        agent.kill()
        agent.wait()
