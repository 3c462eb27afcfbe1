"""A Mosquitto that wants credentials, for the TLS and ``edgeagent fleet`` tests: a throw-away
PKI made by the openssl CLI, a TLS listener that requires a client certificate (its CN is the
user name), and a password file made by ``mosquitto_passwd``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import Broker, free_port

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", *EC_KEY, "-keyout", key, "-out", cert, "-days", "2",
             "-subj", f"/CN={name}")
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], name: str, cn: str,
          san: str | None = None) -> tuple[Path, Path]:
    """A certificate for ``cn`` signed by ``ca``: (certificate, key)."""
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    _openssl("req", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    extra: list[str | Path] = []
    if san is not None:
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", directory / f"{name}.ext"]
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", *extra)
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path
    ca_key: Path  # to issue more certificates
    client_cert: Path  # CN = s1-n1, the broker's user name for it
    client_key: Path
    stranger_cert: Path  # signed by a CA the broker does not trust
    stranger_key: Path
    other_ca: Path

    @property
    def directory(self) -> Path:
        return self.ca.parent


def make_pki(directory: Path) -> Pki:
    """A CA, the broker's certificate (localhost, 127.0.0.1), a client certificate and a
    stranger's from another CA."""
    ca, other = make_ca(directory, "ca"), make_ca(directory, "other-ca")
    issue(directory, ca, "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    client = issue(directory, ca, "client", "s1-n1")
    stranger = issue(directory, other, "stranger", "s1-n1")
    return Pki(ca[0], ca[1], *client, *stranger, other[0])


@dataclass(frozen=True)
class TlsBroker:
    broker: Broker  # its plain listener serves the tests' own subscribers
    port: int

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}"


def add_tls_listener(broker: Broker, pki: Pki, acl: Path) -> TlsBroker:
    """Restart ``broker`` with a TLS listener that wants a client certificate signed by the
    PKI's CA, whose CN is the user name ``acl`` knows."""
    port = free_port()
    broker.stop()
    broker.extra_config = [
        f"acl_file {acl}",
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca}", f"certfile {pki.directory / 'server.crt'}",
        f"keyfile {pki.directory / 'server.key'}",
        "require_certificate true", "use_identity_as_username true",
    ]
    broker.start()
    return TlsBroker(broker, port)


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file for ``users`` (name: password)."""
    for i, (name, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(path), name,
                        password], check=True, capture_output=True)
    return path
