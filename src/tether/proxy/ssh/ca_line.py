"""The public key of Tether's target-facing SSH CA, read from a node's own database.

Used by ``tether target ssh-ca``: it opens the node's store with the node's master key, as
``tether admin-token create`` does (whoever can run it can read the node's configuration and
database anyway), and creates the CA on first use, so the line can be put in the targets'
``TrustedUserCAKeys`` before the first session. Only public keys are ever printed: the
current CA's, and while a rotation is in progress the staged key's too (hosts must trust
both); ``--rotate`` stages or promotes (:meth:`tether.vault.ssh_certs.TargetCA.rotate`).
"""

from __future__ import annotations

from tether.config import Settings
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import load_master_key
from tether.store import Store
from tether.vault.secrets import SecretStore
from tether.vault.ssh_certs import Rotation, TargetCA


async def target_ca_public_key(settings: Settings, *, rotate: bool = False) -> Rotation:
    """The ``TrustedUserCAKeys`` lines of the node configured by ``settings`` (step
    ``current``), or, with ``rotate``, one rotation step and the lines after it.

    Raises ``MasterKeyError``, ``StoreError``, ``DecryptionError`` or ``SecretError`` (the CA
    key stored under another master key, say); the caller reports them.
    """
    cipher = EnvelopeCipher(load_master_key(settings.data_dir))
    store = await Store.open(settings.database)
    try:
        ca = TargetCA(SecretStore(store.engine, cipher))
        if rotate:
            return await ca.rotate()
        return Rotation("current", await ca.trusted_lines())
    finally:
        await store.close()
