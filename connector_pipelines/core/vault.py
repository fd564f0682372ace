"""The encrypted credential vault: secrets at rest as Fernet tokens in ``cp_credentials``.

Keys come from the environment (``CONNECTOR_VAULT_KEYS``, comma-separated Fernet keys). The first
key encrypts; every key decrypts (``MultiFernet``), so rotating a key is a migration, not an outage:

1. prepend a new key: ``CONNECTOR_VAULT_KEYS=<new>,<old>``;
2. ``Vault.from_env().rotate()`` re-encrypts every credential with the new key;
3. drop the old key from the variable.

``locked(name)`` is the one place a rotating secret (Atlassian's refresh token) may be read and
replaced: it holds a lock shared by every process that uses the same database (PostgreSQL: an
advisory transaction lock on the name plus ``SELECT ... FOR UPDATE`` on the row; SQLite: the
database write lock taken by ``BEGIN IMMEDIATE``) and writes the new value in the same transaction
that read the old one.

Plaintext never reaches the table, a log line or an exception message. The credential's name is
sealed inside the ciphertext too, so a ciphertext copied onto another row does not decrypt as that
row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Connection, Engine

from connector_pipelines.core.db import credentials, get_engine, is_sqlite, utcnow, write_transaction

VAULT_KEYS_ENV = "CONNECTOR_VAULT_KEYS"

Value = dict[str, Any] | str

_GENERATE_HINT = (
    "generate one with `python -c \"from connector_pipelines.core.vault import Vault; "
    "print(Vault.generate_key())\"`"
)


class VaultError(Exception):
    """The vault cannot do what was asked (missing or wrong keys, undecryptable credential)."""


def _parse_keys(keys: list[str] | tuple[str, ...] | str) -> MultiFernet:
    if isinstance(keys, str):
        keys = keys.split(",")
    cleaned = [k.strip() for k in keys if k and k.strip()]
    if not cleaned:
        raise VaultError(f"no vault key configured: set {VAULT_KEYS_ENV} to one or more Fernet keys ({_GENERATE_HINT})")
    fernets = []
    for i, key in enumerate(cleaned, start=1):
        try:
            fernets.append(Fernet(key.encode("ascii") if isinstance(key, str) else key))
        except (ValueError, TypeError, UnicodeEncodeError):
            # Never echo the key itself.
            raise VaultError(
                f"{VAULT_KEYS_ENV}: key #{i} is not a valid Fernet key (32 url-safe base64-encoded bytes); "
                f"{_GENERATE_HINT}"
            ) from None
    return MultiFernet(fernets)


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, one per credential name."""
    return int.from_bytes(hashlib.sha256(b"cp_vault:" + name.encode("utf-8")).digest()[:8], "big", signed=True)


class LockedCredential:
    """What ``Vault.locked`` yields: the decrypted value and a ``set`` that writes in the same transaction."""

    def __init__(self, vault: Vault, conn: Connection, name: str, value: Value | None, exists: bool) -> None:
        self._vault = vault
        self._conn = conn
        self.name = name
        self.value = value
        self._exists = exists

    def set(self, new_value: Value) -> None:
        ciphertext = self._vault._encrypt(self.name, new_value)
        if self._exists:
            self._conn.execute(
                credentials.update()
                .where(credentials.c.name == self.name)
                .values(ciphertext=ciphertext, version=credentials.c.version + 1, updated_at=utcnow())
            )
        else:
            self._conn.execute(
                credentials.insert().values(name=self.name, ciphertext=ciphertext, version=1, updated_at=utcnow())
            )
            self._exists = True
        self.value = new_value

    def __repr__(self) -> str:  # never show the secret
        return f"LockedCredential(name={self.name!r}, present={self.value is not None})"


class Vault:
    """Encrypted credentials in the project's database (see the module docstring)."""

    def __init__(self, engine: Engine, keys: list[str] | str) -> None:
        self.engine = engine
        self._fernet = _parse_keys(keys)

    @classmethod
    def from_env(cls, engine: Engine | None = None) -> Vault:
        keys = os.environ.get(VAULT_KEYS_ENV)
        if not keys or not keys.strip():
            raise VaultError(f"{VAULT_KEYS_ENV} is not set: the credential vault needs at least one Fernet key; "
                             f"{_GENERATE_HINT}")
        fernet = _parse_keys(keys)  # validate before touching the database
        vault = cls.__new__(cls)
        vault.engine = engine if engine is not None else get_engine()
        vault._fernet = fernet
        return vault

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def __repr__(self) -> str:
        return f"Vault(engine={self.engine.url.render_as_string(hide_password=True)!r})"

    # -- encryption -------------------------------------------------------------------------------
    def _encrypt(self, name: str, value: Value) -> bytes:
        if not isinstance(value, (dict, str)):
            raise TypeError(f"vault values are dicts or strings, not {type(value).__name__}")
        plaintext = json.dumps({"n": name, "v": value}, separators=(",", ":"), sort_keys=True)
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def _decrypt(self, name: str, ciphertext: bytes) -> Value:
        try:
            envelope = json.loads(self._fernet.decrypt(bytes(ciphertext)).decode("utf-8"))
        except InvalidToken:
            raise VaultError(
                f"credential {name!r} could not be decrypted with the configured keys (was {VAULT_KEYS_ENV} "
                "rotated without keeping the old key? Put the old key back after the new one, run "
                "Vault.rotate(), then drop it)"
            ) from None
        if not isinstance(envelope, dict) or envelope.get("n") != name:
            raise VaultError(f"credential {name!r} holds a ciphertext sealed for another credential; refusing it")
        return envelope["v"]

    # -- plain operations -------------------------------------------------------------------------
    def put(self, name: str, value: Value) -> None:
        with write_transaction(self.engine) as conn:
            row = self._lock_row(conn, name)
            LockedCredential(self, conn, name, None, row is not None).set(value)

    def get(self, name: str) -> Value | None:
        with self.engine.connect() as conn:
            row = self._select(conn, name)
        return None if row is None else self._decrypt(name, row.ciphertext)

    def names(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r.name for r in conn.execute(sa.select(credentials.c.name).order_by(credentials.c.name))]

    def delete(self, name: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(credentials.delete().where(credentials.c.name == name))

    def rotate(self) -> int:
        """Re-encrypt every credential with the primary key (all in one transaction); returns the count."""
        count = 0
        with write_transaction(self.engine) as conn:
            stmt = sa.select(credentials.c.name, credentials.c.ciphertext).order_by(credentials.c.name)
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update()
            for row in conn.execute(stmt).all():
                try:
                    fresh = self._fernet.rotate(bytes(row.ciphertext))
                except InvalidToken:
                    raise VaultError(
                        f"credential {row.name!r} could not be decrypted with the configured keys (was "
                        f"{VAULT_KEYS_ENV} rotated without keeping the old key?); nothing was rotated"
                    ) from None
                conn.execute(credentials.update().where(credentials.c.name == row.name)
                             .values(ciphertext=fresh, updated_at=utcnow()))
                count += 1
        return count

    # -- the lock ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self, name: str) -> Iterator[LockedCredential]:
        """Exclusive access to one credential across every process on this database.

        Yields an object with ``.value`` (decrypted, or None) and ``.set(new_value)``; the write
        commits when the block exits normally and rolls back if it raises.
        """
        with write_transaction(self.engine) as conn:  # SQLite: BEGIN IMMEDIATE = the write lock
            row = self._lock_row(conn, name)
            value = None if row is None else self._decrypt(name, row.ciphertext)
            yield LockedCredential(self, conn, name, value, row is not None)

    def _lock_row(self, conn: Connection, name: str):
        """Inside a write transaction: lock the credential (even one not stored yet) and read its row."""
        if self.engine.dialect.name == "postgresql":
            # The row lock alone cannot guard a credential that does not exist yet.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(name)})
        return self._select(conn, name, for_update=True)

    def _select(self, conn: Connection, name: str, *, for_update: bool = False):
        stmt = sa.select(credentials.c.name, credentials.c.ciphertext).where(credentials.c.name == name)
        if for_update and not is_sqlite(self.engine):
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()
