"""Broker URLs: parsed once, the same way for ``config check``, ``demo`` and the MQTT link."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class BrokerAddress:
    transport: str  # "tcp" or "unix"
    host: str  # host name, or the socket path for unix
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://host[:1883]``, ``mqtts://host[:8883]`` or ``unix:///path/to/socket``.

        Raises ``ValueError`` naming what is wrong, never a deeper error at connect time.
        """
        parts = urlparse(url)
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{url!r}: a unix:// broker URL needs a socket path")
            return cls("unix", parts.path, 1, tls=False)  # paho checks the port even for unix
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{url!r}: expected mqtt://host:port, mqtts://host:port or "
                             "unix:///path")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from exc
        tls = parts.scheme == "mqtts"
        if port == 0:
            raise ValueError(f"{url!r}: port 0 is not a broker port")
        return cls("tcp", parts.hostname, port or (8883 if tls else 1883), tls)
