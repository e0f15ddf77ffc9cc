"""The TLS client context every network sink uses.

Certificates are always verified, and the server's name is always checked (Python's
default context does both): there is no option to turn verification off, since an audit
trail sent to whoever answers is a leak. A private CA is given with ``ca_file``; a client
certificate (``cert_file``, ``key_file``) for receivers that authenticate their senders.
TLS 1.2 is the minimum. The private key must be unencrypted: given an encrypted one, OpenSSL
would ask for its passphrase on the terminal, holding the node's start, and then fail with
``[Errno 22] Invalid argument``; the sink is refused at start with a message that says so.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tether.audit.sinks.config import SinkConfigError


def client_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A verifying client context; :class:`SinkConfigError` if a file is unusable."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except ssl.SSLError as error:
        files = f"{cert_file}" if key_file is None else f"{cert_file} and {key_file}"
        raise SinkConfigError(
            f"TLS files unusable: {files}: not a PEM certificate chain and its unencrypted "
            f"private key ({error.reason or error})"
        ) from None
    except OSError as error:
        raise SinkConfigError(f"TLS files unusable: {error}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _no_passphrase() -> bytes:
    """The passphrase OpenSSL gets for an encrypted key: none, so that it fails at once."""
    return b""
