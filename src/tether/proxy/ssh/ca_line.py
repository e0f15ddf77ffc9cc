"""The public key of Tether's target-facing SSH CA, read from a node's own database.

Used by ``tether target ssh-ca``: it opens the node's store with the node's master key, as
``tether admin-token create`` does (whoever can run it can read the node's configuration and
database anyway), and creates the CA on first use, so the line can be put in the targets'
``TrustedUserCAKeys`` before the first session. Only the public key is ever printed.
"""

from __future__ import annotations

from tether.config import Settings
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import load_master_key
from tether.store import Store
from tether.vault.secrets import SecretStore
from tether.vault.ssh_certs import TargetCA


async def target_ca_public_key(settings: Settings) -> str:
    """The ``TrustedUserCAKeys`` line of the node configured by ``settings``.

    Raises ``MasterKeyError``, ``StoreError`` or ``DecryptionError`` (the caller reports them).
    """
    cipher = EnvelopeCipher(load_master_key(settings.data_dir))
    store = await Store.open(settings.database)
    try:
        return await TargetCA(SecretStore(store.engine, cipher)).public_key_line()
    finally:
        await store.close()
