"""The Ed25519 key that signs audit checkpoints and exports.

A key is named by its id: the sha256 of its raw 32-byte public key, in hex. Verifiers trust
keys from outside the database (the configured key and `audit.trusted_public_keys`), never
from what they are verifying, so someone who can write to the database cannot sign anything.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.errors import SigningKeyError
from core.errors import InvalidInputError
from core.settings import Settings


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey
    key_id: str

    def sign(self, message: bytes) -> str:
        return self.private_key.sign(message).hex()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_file(private_key_file: Path) -> Path:
    """Where the public half of a key file is exported: signing-key.pem -> signing-key.pub.pem."""
    return private_key_file.with_name(private_key_file.stem + ".pub.pem")


def verify_signature(public_key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        public_key.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


_signers: dict[Path, Signer] = {}
_signers_lock = threading.Lock()


def signer(settings: Settings) -> Signer:
    """The configured signing key, loaded once per process. The embedded default key is
    created on first use; a key file named in settings must exist."""
    path = settings.audit_signing_key_file
    with _signers_lock:
        found = _signers.get(path)
        if found is None:
            if not path.exists() and settings.audit.signing_key_file is None:
                _create_key(path)
            private_key = _load_private_key(path)
            found = _signers[path] = Signer(private_key, key_id(private_key.public_key()))
        return found


def _create_key(path: Path) -> None:
    """Write a new key without ever exposing a half-written file: written aside, then linked
    into place, which fails if another process got there first (its key then wins)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink()
    winner = _load_private_key(path)
    public = public_key_file(path)
    aside_public = public.with_name(f".{public.name}.{os.getpid()}.{threading.get_ident()}")
    aside_public.write_text(public_pem(winner.public_key()))
    aside_public.replace(public)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise SigningKeyError(f"the audit signing key {path} cannot be read: {e}") from e
    except ValueError as e:
        raise SigningKeyError(f"the audit signing key {path} is not a PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the audit signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM file; a private key file gives its public half."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"public key {path} cannot be read: {e}", field="public_key") from e
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key: object = private.public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise InvalidInputError(f"{path} is not a PEM key", field="public_key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError(f"{path} is not an Ed25519 key", field="public_key")
    return key


def trusted_keys(settings: Settings, extra: Iterable[Path] = ()) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key, for every key whose signatures are accepted: the configured
    signing key (its public file will do where the private one is absent), the earlier keys
    in settings and `extra`. Creates nothing."""
    paths = [*settings.audit.trusted_public_keys, *extra]
    own = settings.audit_signing_key_file
    if own.exists():
        paths.append(own)
    elif public_key_file(own).exists():
        paths.append(public_key_file(own))
    keys = [load_public_key(path) for path in paths]
    return {key_id(key): key for key in keys}
