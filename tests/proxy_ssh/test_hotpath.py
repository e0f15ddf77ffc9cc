"""asyncssh's per-packet path as the broker installs it (tether.proxy.ssh.hotpath).

The AES-GCM class is checked against asyncssh's own, packet by packet: the same bytes out,
every tampered packet refused, and asyncssh's other caller (private-key encryption) gets
the shape it expects. End to end,
every SSH test of this package speaks AES-GCM with real OpenSSH through the installed class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import asyncssh
import pytest
from asyncssh import encryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.ssh import hotpath
from tether.proxy.ssh.hotpath import GCM_ALGS, BrokerGCMEncryption

_KEY_SIZES = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}


def _asyncssh_gcm(alg: bytes, key: bytes, iv: bytes) -> encryption.Encryption:
    cipher_name = {b"aes128-gcm@openssh.com": "aes128-gcm", b"aes256-gcm@openssh.com": "aes256-gcm"}
    return encryption.GCMEncryption.new(cipher_name[alg], key, iv)


@settings(max_examples=60, deadline=None)
@given(
    alg=st.sampled_from(GCM_ALGS),
    seed=st.binary(min_size=44, max_size=44),
    counter=st.sampled_from([0, 1, 2**32 - 1, 2**64 - 3, 2**64 - 1]),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=6),
)
def test_the_same_packets_as_asyncssh(
    alg: bytes, seed: bytes, counter: int, sizes: list[int]
) -> None:
    """Packet after packet (the invocation counter wrapping at 2**64 included), the broker's
    class seals exactly what asyncssh's seals, and each side opens the other's packets."""
    key = seed[: _KEY_SIZES[alg]]
    iv = seed[32:36] + counter.to_bytes(8, "big")
    ours_send, ours_recv = BrokerGCMEncryption(key, iv), BrokerGCMEncryption(key, iv)
    theirs_send, theirs_recv = _asyncssh_gcm(alg, key, iv), _asyncssh_gcm(alg, key, iv)
    for seq, blocks in enumerate(sizes):
        body = bytes(
            (seq + i) % 256 for i in range(blocks * 16)
        )  # whole AES blocks, as SSH packets are
        header = len(body).to_bytes(4, "big")
        ours = ours_send.encrypt_packet(seq, header, body)
        assert ours == theirs_send.encrypt_packet(seq, header, body)
        packet, mac = ours
        first, rest = packet[:16], packet[16:]
        assert ours_recv.decrypt_header(seq, first, 4) == (first, header)
        assert ours_recv.decrypt_packet(seq, first, rest, 4, mac) == body
        assert theirs_recv.decrypt_packet(seq, first, rest, 4, mac) == body


@settings(max_examples=80, deadline=None)
@given(
    body_blocks=st.integers(1, 8),
    where=st.sampled_from(["header", "first", "rest", "mac"]),
    index=st.integers(0, 10_000),
    flip=st.integers(1, 255),
)
def test_a_changed_byte_is_refused(body_blocks: int, where: str, index: int, flip: int) -> None:
    """One byte changed anywhere (length, ciphertext or tag) and the packet is refused, as
    asyncssh's own class refuses it; the next packet is still opened with the next nonce."""
    key, iv = bytes(range(16)), bytes(range(100, 112))
    sender, receiver = BrokerGCMEncryption(key, iv), BrokerGCMEncryption(key, iv)
    theirs = _asyncssh_gcm(GCM_ALGS[0], key, iv)
    body = bytes(body_blocks * 16 + 12)
    packet, mac = sender.encrypt_packet(0, len(body).to_bytes(4, "big"), body)
    parts = {"header": bytearray(packet[:4]), "first": bytearray(packet[4:16])}
    parts["rest"], parts["mac"] = bytearray(packet[16:]), bytearray(mac)
    part = parts[where]
    part[index % len(part)] ^= flip
    first = bytes(parts["header"] + parts["first"])
    args = (0, first, bytes(parts["rest"]), 4, bytes(parts["mac"]))
    assert receiver.decrypt_packet(*args) is None
    assert theirs.decrypt_packet(*args) is None
    packet, mac = sender.encrypt_packet(1, b"\0\0\0\x1c", bytes(28))
    assert receiver.decrypt_packet(1, packet[:16], packet[16:], 4, mac) == bytes(28)


def test_a_short_iv_is_refused() -> None:
    with pytest.raises(ValueError, match="12-byte"):
        BrokerGCMEncryption(bytes(16), bytes(8))


@pytest.fixture()
def installed() -> Iterator[None]:
    hotpath.install()
    yield


def test_install_puts_the_class_in_asyncssh(installed: None) -> None:
    assert hotpath.installed()
    assert hotpath.install()  # idempotent
    for alg in GCM_ALGS:
        made = encryption.get_encryption(alg, bytes(_KEY_SIZES[alg]), bytes(12))
        assert type(made) is BrokerGCMEncryption
    chacha = encryption.get_encryption(b"chacha20-poly1305@openssh.com", bytes(64), b"")
    assert type(chacha) is encryption.ChachaEncryption  # only AES-GCM is replaced


def test_install_keeps_an_entry_asyncssh_changed(caplog: pytest.LogCaptureFixture) -> None:
    params = encryption._enc_params  # type: ignore[attr-defined]
    saved = params[GCM_ALGS[0]]
    params[GCM_ALGS[0]] = (encryption.BasicEncryption, saved[1])
    try:
        with caplog.at_level(logging.WARNING, logger="tether.proxy.ssh.hotpath"):
            assert hotpath.install() is False
        assert params[GCM_ALGS[0]][0] is encryption.BasicEncryption
        assert "kept as it is" in caplog.text
        assert not hotpath.installed()
    finally:
        params[GCM_ALGS[0]] = saved
        hotpath.install()


@pytest.mark.parametrize("alg", GCM_ALGS)
def test_the_private_key_shape_is_asyncssh_s(installed: None, alg: bytes) -> None:
    """asyncssh's private-key encryption calls the same class without a header
    (``encrypt_packet(0, b"", data)`` and ``decrypt_packet(0, b"", data, 0, tag)``) and writes
    ciphertext and tag apart: both come out as asyncssh's own class makes them."""
    key, iv = bytes(range(_KEY_SIZES[alg])), bytes(range(50, 62))
    data = bytes(range(256)) * 3
    made = encryption.get_encryption(alg, key, iv)
    sealed, tag = made.encrypt_packet(0, b"", data)
    assert (sealed, tag) == _asyncssh_gcm(alg, key, iv).encrypt_packet(0, b"", data)
    assert len(tag) == 16 and len(sealed) == len(data)
    assert encryption.get_encryption(alg, key, iv).decrypt_packet(0, b"", sealed, 0, tag) == data
    wrong = encryption.get_encryption(alg, bytes(len(key)), iv)
    assert wrong.decrypt_packet(0, b"", sealed, 0, tag) is None  # a wrong passphrase's key


class _Handler(SSHPacketLogger):
    def __init__(self) -> None:
        self._logger = asyncssh.logging.logger.get_child("hotpath-test")
        self.formatted = 0

    @property
    def logger(self) -> SSHLogger:
        return self._logger

    def _log_packet(self, *args: object) -> None:
        self.formatted += 1
        super()._log_packet(*args)  # type: ignore[arg-type]


def test_packet_logs_are_formatted_only_at_debug_level_3(
    installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    handler = _Handler()
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        asyncssh.set_debug_level(2)
        handler.log_sent_packet(94, 7, b"payload")
        handler.log_received_packet(94, 8, b"payload")
        assert handler.formatted == 0
        assert "payload" not in caplog.text and "Sent" not in caplog.text
        asyncssh.set_debug_level(3)
        try:
            handler.log_sent_packet(94, 7, b"payload")
            handler.log_received_packet(94, 8, b"payload", "note")
        finally:
            asyncssh.set_debug_level(1)
    assert handler.formatted == 2
    assert "Sent" in caplog.text and "Received" in caplog.text and "7 bytes" in caplog.text
