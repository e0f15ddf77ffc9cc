"""The master key (environment and 0600 file) and envelope encryption under it."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether.crypto import masterkey
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import (
    MASTER_KEY_ENV,
    MasterKey,
    MasterKeyError,
    load_master_key,
    parse_master_key,
)

KEY = bytes(range(32))
KEY_B64URL = base64.urlsafe_b64encode(KEY).rstrip(b"=").decode()


def _cipher(material: bytes = KEY) -> EnvelopeCipher:
    return EnvelopeCipher(MasterKey(material, source="test"))


# --- master key from the environment ---------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        KEY_B64URL,
        KEY_B64URL + "=",
        base64.b64encode(KEY).decode(),
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY_B64URL}\n",
    ],
    ids=["base64url", "padded", "standard-base64", "hex", "HEX", "whitespace"],
)
def test_master_key_spellings_parse_to_the_same_bytes(text: str) -> None:
    assert parse_master_key(text, source="x") == KEY


def test_master_key_from_environment_wins_over_the_file(tmp_path: Path) -> None:
    key = load_master_key(tmp_path, environ={MASTER_KEY_ENV: KEY.hex()})
    assert key.material == KEY
    assert "TETHER_MASTER_KEY" in key.source
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "c2VjcmV0",  # 6 bytes
        KEY.hex()[:-2],  # 31 bytes of hex
        KEY.hex() + "00",  # 33 bytes
        KEY_B64URL[:-1] + "!",
        KEY_B64URL[:-1] + "B",  # non-canonical last character
        KEY_B64URL[:20] + "+" + KEY_B64URL[21:30] + "-" + KEY_B64URL[31:],  # mixed alphabets
        "zz" * 32,
    ],
)
def test_bad_master_key_is_a_clear_error_that_does_not_echo_the_value(text: str) -> None:
    with pytest.raises(MasterKeyError) as info:
        load_master_key(Path("/nonexistent"), environ={MASTER_KEY_ENV: text})
    message = str(info.value)
    assert "TETHER_MASTER_KEY" in message
    assert "32-byte" in message
    if text.strip():
        assert text.strip() not in message


def test_master_key_repr_hides_the_material() -> None:
    key = MasterKey(KEY, source="test")
    assert KEY.hex() not in repr(key)
    assert repr(KEY) not in repr(key)


def test_master_key_must_be_32_bytes() -> None:
    with pytest.raises(MasterKeyError):
        MasterKey(b"short", source="test")


# --- master key file ------------------------------------------------------------------


def test_key_file_is_created_0600_in_a_0700_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = load_master_key(data_dir, environ={})
    path = data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert key.source == str(path)
    assert parse_master_key(path.read_text(), source="f") == key.material
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temporary left


def test_key_file_is_reused_on_the_next_start(tmp_path: Path) -> None:
    first = load_master_key(tmp_path, environ={})
    second = load_master_key(tmp_path, environ={})
    assert first.material == second.material
    assert first.key_id == second.key_id


def test_two_generated_keys_differ(tmp_path: Path) -> None:
    a = load_master_key(tmp_path / "a", environ={})
    b = load_master_key(tmp_path / "b", environ={})
    assert a.material != b.material


def test_creation_race_keeps_the_key_written_first(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY_B64URL + "\n")
    path.chmod(0o600)
    # The loser of a creation race links after the winner: it must read the winner's key.
    key = masterkey._create_key_file(path)
    assert key.material == KEY
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602])
def test_key_file_accessible_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY_B64URL + "\n")
    path.chmod(mode)
    with pytest.raises(MasterKeyError) as info:
        load_master_key(tmp_path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message
    assert stat.S_IMODE(path.stat().st_mode) == mode  # refused, not silently fixed


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(mode)
    assert load_master_key(tmp_path, environ={}).material == KEY


def test_key_file_through_a_symlink_is_checked_on_its_target(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text(KEY_B64URL)
    target.chmod(0o644)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "master.key").symlink_to(target)
    with pytest.raises(MasterKeyError, match="0644"):
        load_master_key(tmp_path / "data", environ={})
    target.chmod(0o600)
    assert load_master_key(tmp_path / "data", environ={}).material == KEY


def test_key_file_that_is_a_dangling_symlink_is_refused(tmp_path: Path) -> None:
    # A secret mount that is missing: was a FileNotFoundError out of load_master_key (a
    # traceback at start), and never a reason to make a key of our own.
    (tmp_path / "master.key").symlink_to(tmp_path / "mounted" / "key")
    with pytest.raises(MasterKeyError, match="symbolic link to a missing file"):
        load_master_key(tmp_path, environ={})
    assert not (tmp_path / "mounted").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temporary left


def test_key_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "master.key", 0o600)  # opening it for reading used to block
    # In a child process, so that the old behaviour fails the test instead of hanging it.
    code = (
        "import sys; from pathlib import Path; from tether.crypto import masterkey as m\n"
        "try: m.load_master_key(Path(sys.argv[1]), environ={})\n"
        "except m.MasterKeyError as e: print(e)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=20
    )
    assert "not a regular file" in done.stdout, done.stderr


def test_key_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "master.key").mkdir(mode=0o700)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        load_master_key(tmp_path, environ={})


def test_key_file_with_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"\xff\xfe not a key")
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match=r"master\.key"):
        load_master_key(tmp_path, environ={})


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(MasterKeyError, match="data"):
        load_master_key(tmp_path / "data", environ={})


def test_failed_creation_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("tether.crypto.masterkey.os.link", refuse)
    with pytest.raises(MasterKeyError, match="cannot create"):
        load_master_key(tmp_path, environ={})
    assert list(tmp_path.iterdir()) == []


# --- envelope -------------------------------------------------------------------------


def test_round_trip_bytes_and_text() -> None:
    cipher = _cipher()
    blob = cipher.encrypt(b"s3cret", purpose="vault.credential", name="billing-db")
    assert cipher.decrypt(blob, purpose="vault.credential", name="billing-db") == b"s3cret"
    text = cipher.encrypt_text(b"", purpose="vault.credential", name="billing-db")
    assert "=" not in text
    assert cipher.decrypt_text(text, purpose="vault.credential", name="billing-db") == b""


def test_each_encryption_is_fresh() -> None:
    cipher = _cipher()
    a = cipher.encrypt(b"same", purpose="p", name="n")
    b = cipher.encrypt(b"same", purpose="p", name="n")
    assert a != b
    assert a[0] == 1  # version byte
    assert a[1:9] == cipher.key_id


def test_plaintext_does_not_appear_in_the_envelope() -> None:
    blob = _cipher().encrypt(b"PLAINTEXT-MARKER" * 4, purpose="p", name="n")
    assert b"PLAINTEXT-MARKER" not in blob


@pytest.mark.parametrize(
    ("offset", "region"),
    [(9, "wrap nonce"), (30, "wrapped key"), (69, "data nonce"), (85, "ciphertext"), (-1, "tag")],
)
def test_any_flipped_byte_is_a_decryption_error(offset: int, region: str) -> None:
    cipher = _cipher()
    blob = bytearray(cipher.encrypt(b"value-of-some-length", purpose="p", name="n"))
    blob[offset] ^= 0x01
    with pytest.raises(DecryptionError, match="authentication failed"):
        cipher.decrypt(bytes(blob), purpose="p", name="n")


def test_truncated_envelope_is_refused() -> None:
    cipher = _cipher()
    blob = cipher.encrypt(b"value", purpose="p", name="n")
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob[:-1], purpose="p", name="n")
    with pytest.raises(DecryptionError, match="too short"):
        cipher.decrypt(blob[:50], purpose="p", name="n")


@pytest.mark.parametrize(
    ("purpose", "name"),
    [
        ("vault.credential", "other-db"),  # moved to another record
        ("identity.signing-keys", "billing-db"),  # decrypted for another purpose
        ("vault.credentialb", "illing-db"),  # same concatenation, other split
        ("vault.credential", "billing-db "),
    ],
)
def test_ciphertext_cannot_move_to_another_record(purpose: str, name: str) -> None:
    cipher = _cipher()
    blob = cipher.encrypt(b"s3cret", purpose="vault.credential", name="billing-db")
    with pytest.raises(DecryptionError, match="another record"):
        cipher.decrypt(blob, purpose=purpose, name=name)


def test_wrong_master_key_is_reported_as_such() -> None:
    blob = _cipher().encrypt(b"s3cret", purpose="p", name="n")
    with pytest.raises(DecryptionError, match="another master key"):
        _cipher(bytes(32)).decrypt(blob, purpose="p", name="n")


def test_forged_key_id_fails_authentication() -> None:
    other = _cipher(bytes(32))
    blob = bytearray(other.encrypt(b"s3cret", purpose="p", name="n"))
    blob[1:9] = _cipher().key_id  # claim it was ours
    with pytest.raises(DecryptionError, match="authentication failed"):
        _cipher().decrypt(bytes(blob), purpose="p", name="n")


def test_unknown_version_is_refused() -> None:
    cipher = _cipher()
    blob = bytearray(cipher.encrypt(b"s3cret", purpose="p", name="n"))
    blob[0] = 2
    with pytest.raises(DecryptionError, match="unknown envelope version 2"):
        cipher.decrypt(bytes(blob), purpose="p", name="n")


@pytest.mark.parametrize("text", ["", "!!!!", "abc=", "a" * 200 + "é", "ab cd" * 40])
def test_bad_text_form_is_refused(text: str) -> None:
    with pytest.raises(DecryptionError):
        _cipher().decrypt_text(text, purpose="p", name="n")


def test_key_separation_the_kek_is_not_the_master_key() -> None:
    key = MasterKey(KEY, source="test")
    assert key.derive(b"tether/envelope/v1/kek") != KEY
    assert key.derive(b"a") != key.derive(b"b")
    assert len(key.key_id) == 8


def test_empty_purpose_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="purpose"):
        _cipher().encrypt(b"x", purpose="", name="n")
