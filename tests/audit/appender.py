"""A child process for the durability test: appends events as fast as it can, forever.

``python -m tests.audit.appender URL KEY SYNCHRONOUS EMITTERS``: ``KEY`` is the base64url
raw Ed25519 private key to sign checkpoints with. Each event's ``seq`` is printed (and
flushed) only after its append returned, that is after its batch committed: a printed seq
is an acknowledged event. The parent kills this process with SIGKILL mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.audit.conftest import sample
from tether.audit.log import AuditLog
from tether.identity.keys import SigningKey
from tether.store import Store


async def main(url: str, key_text: str, synchronous: str, emitters: int) -> None:
    raw = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    key = SigningKey.from_private_key(Ed25519PrivateKey.from_private_bytes(raw), 0.0)
    store = await Store.open(url)
    log = AuditLog(store.engine, lambda: key, checkpoint_every=500, sqlite_synchronous=synchronous)  # type: ignore[arg-type]
    await log.start()
    out = sys.stdout

    async def emit(n: int) -> None:
        i = n
        while True:
            event = await log.append(sample(i))
            out.write(f"{event.seq}\n")
            out.flush()
            i += emitters

    print("ready", flush=True)
    await asyncio.gather(*(emit(n) for n in range(emitters)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
