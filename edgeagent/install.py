"""``edgeagent install-service``: the unit, its slice, user, tmpfiles, udev and polkit rules and
an example config, installed from ``systemd/`` into ``/etc`` (or under ``--root``, for an image).

Idempotent: a file already as it should be is left alone, a second run changes nothing and
says so. The config is the operator's: an existing one is never overwritten. The unit's
``ExecStart`` points at the ``edgeagent`` of the Python running the installer (or of
``--venv``). With ``--root /`` the user is created at once by ``systemd-sysusers``; under another
root only files are written (``systemd-sysusers.service`` creates it at the image's first boot).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

CONFIG_PATH = Path("/etc/edgeagent/edgeagent.toml")  # the unit's --config
UNIT_EXEC = "/opt/edgeagent/bin/edgeagent"  # what systemd/edgeagent.service says
USER = "edgeagent"
# What the unit's ProtectHome=yes and PrivateTmp=yes hide from the service: an agent installed
# under them cannot be started (status 203/EXEC).
HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Item:
    source: str  # in systemd/
    target: str  # under the root
    mode: int
    keep: bool = False  # the operator's once it exists


ITEMS = (
    Item("edgeagent.service", "etc/systemd/system/edgeagent.service", 0o644),
    Item("edgeagent-workloads.slice", "etc/systemd/system/edgeagent-workloads.slice", 0o644),
    Item("edgeagent.sysusers", "etc/sysusers.d/edgeagent.conf", 0o644),
    Item("edgeagent.tmpfiles", "etc/tmpfiles.d/edgeagent.conf", 0o644),
    Item("70-edgeagent-serial.rules", "etc/udev/rules.d/70-edgeagent-serial.rules", 0o644),
    Item("50-edgeagent.rules", "etc/polkit-1/rules.d/50-edgeagent.rules", 0o644),
    Item("50-edgeagent.pkla", "etc/polkit-1/localauthority/50-local.d/50-edgeagent.pkla",
         0o644),
    # Readable by the service's group only: it may hold the broker's credentials.
    Item("edgeagent.toml", str(CONFIG_PATH).lstrip("/"), 0o640, keep=True),
)


def _source(name: str) -> bytes:
    try:
        return resources.files("edgeagent.systemd_units").joinpath(name).read_bytes()
    except ModuleNotFoundError:  # a source tree that was never installed
        return (Path(__file__).resolve().parent.parent / "systemd" / name).read_bytes()


def agent_program(venv: Path | None = None) -> tuple[str, list[str]]:
    """The program systemd starts for this installation's agent, and its leading arguments."""
    if venv is not None:
        return str(venv / "bin" / "edgeagent"), []
    script = Path(sys.executable).parent / "edgeagent"  # not resolved: a venv's python links out
    if script.exists():
        return str(script), []
    return sys.executable, ["-m", "edgeagent"]


def agent_command(venv: Path | None = None) -> str:
    """How systemd starts this installation's agent, quoted for ``ExecStart=``."""
    program, args = agent_program(venv)
    return " ".join([exec_word(program), *args])


def exec_word(word: str) -> str:
    """One word of a unit's command line: ``%`` doubled (a specifier otherwise), and quoted
    when it holds a space, a quote or a backslash."""
    word = word.replace("%", "%%")
    if not any(c in word for c in ' \t"\\\''):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hidden_from_service(program: str) -> Path | None:
    """The directory the unit's sandbox hides ``program`` in, if it does."""
    return next((d for d in HIDDEN if Path(program).is_relative_to(d)), None)


def _group_id(root: Path, name: str) -> int | None:
    """``name``'s gid in the root's own group file (not the host's, for an image root)."""
    try:
        lines = (root / "etc" / "group").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def install(root: Path, venv: Path | None = None, dry_run: bool = False,
            out: TextIO = sys.stdout) -> int:
    """Install or update every file; print what changed and the next steps."""
    command = agent_command(venv)
    program = agent_program(venv)[0]
    hidden = hidden_from_service(program)
    if hidden is not None:
        print(f"edgeagent install-service: warning: {program} is under {hidden}, which the "
              "unit's ProtectHome=/PrivateTmp= hide from the service: it would not start. "
              "Install into a venv elsewhere (python3 -m venv /opt/edgeagent) and give --venv.",
              file=sys.stderr)
    changed = 0
    for item in ITEMS:
        target = root / item.target
        content = _source(item.source)
        if item.source.endswith(".service"):
            content = content.replace(UNIT_EXEC.encode(), command.encode())
        exists = target.exists()
        if exists and (item.keep or (target.read_bytes() == content
                                     and target.stat().st_mode & 0o7777 == item.mode)):
            print(f"  unchanged  {target}" + (" (yours: kept)" if item.keep else ""), file=out)
            continue
        changed += 1
        verb = "would " if dry_run else ""
        print(f"  {verb}{'update' if exists else 'install'}  {target}", file=out)
        if dry_run:
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(content)
            tmp.chmod(item.mode)
            tmp.replace(target)
        except PermissionError as exc:
            print(f"edgeagent install-service: {exc} (run it as root, or give --root)",
                  file=sys.stderr)
            return 1
    if root == Path("/") and not dry_run:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            try:
                subprocess.run(["systemd-sysusers", str(root / ITEMS[2].target)], check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"edgeagent install-service: creating user {USER}: {exc}",
                      file=sys.stderr)
                return 1
            print(f"  created user {USER}", file=out)
            changed += 1
    config = root / CONFIG_PATH.relative_to("/")
    gid = _group_id(root, USER)
    if not dry_run and gid is not None and config.exists() and config.stat().st_gid != gid:
        os.chown(config, -1, gid)  # the service reads it as group edgeagent
        print(f"  group {USER}  {config}", file=out)
        changed += 1
    if changed == 0:
        print("nothing to do: everything is installed", file=out)
    elif not dry_run:
        print(f"\nnext:\n  edit {CONFIG_PATH}, then: edgeagent config check {CONFIG_PATH}\n"
              "  systemctl daemon-reload\n  systemctl enable --now edgeagent.service\n"
              "  udevadm control --reload && udevadm trigger --subsystem-match=tty\n"
              "  journalctl -u edgeagent -f", file=out)
        if gid is None:
            print(f"  chgrp {USER} {CONFIG_PATH}  (once the user exists: the service reads "
                  "it)", file=out)
    print(f"ExecStart={command} run --config {CONFIG_PATH}", file=out)
    return 0
