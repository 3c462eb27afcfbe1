"""TLS for the MQTT link: the client context, and failures said in words an operator can act on.

The server certificate is always verified against ``ca_file`` (or the system store); only the
host name check can be turned off, and only with ``insecure``. A client certificate and key make
it mutual TLS. A refused handshake surfaces as an OpenSSL reason such as
``TLSV13_ALERT_CERTIFICATE_REQUIRED``; ``tls_failure`` turns that into ``tls: certificate
required``.
"""

from __future__ import annotations

import re
import ssl

from edgeagent.config import TlsConfig

_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
_ALERT_PREFIX = re.compile(r"^(TLSV1[0-9]?_ALERT_|SSLV3_ALERT_)")


def client_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """A verifying client context; with a certificate and key, for mutual TLS."""
    tls = tls or TlsConfig()
    context = ssl.create_default_context(
        cafile=None if tls.ca_file is None else str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file),
                                None if tls.key_file is None else str(tls.key_file))
    return context


def _words(reason: str) -> str:
    return _ALERT_PREFIX.sub("", reason).lower().replace("_", " ")


def tls_failure(error: ssl.SSLError | str) -> str | None:
    """``tls: <what went wrong>`` for a handshake error or a paho log line that carries one;
    None when it is not about TLS."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = f" ({error.verify_message})" if error.verify_message else ""
        return f"tls: certificate verify failed{detail}"
    if isinstance(error, ssl.SSLError):
        return f"tls: {_words(error.reason) if error.reason else error}"
    found = _SSL_REASON.search(error)
    return None if found is None else f"tls: {_words(found.group(1))}"
