"""The encrypted credential vault: secrets at rest as Fernet tokens in ``cp_credentials``.

Keys come from the environment (``CONNECTOR_VAULT_KEYS``, comma-separated Fernet keys). The first
key encrypts; every key decrypts (``MultiFernet``), so rotating a key is a migration, not an outage:

1. prepend a new key: ``CONNECTOR_VAULT_KEYS=<new>,<old>``;
2. ``connector-pipelines vault rotate`` (``Vault.rotate()``) re-encrypts every credential with the new key;
3. drop the old key from the variable.

``locked(name)`` is the one place a rotating secret (Atlassian's refresh token) may be read and
replaced: it holds the credential's lease (core.leases), shared by every process that uses the same
database, while the caller reads the value, talks to the token endpoint and writes the new value. No
database lock is held across that network call (on SQLite a transaction would hold the whole
database's write lock, and the receiver could not store deliveries meanwhile); the lease is renewed
while held, and a crashed holder's lease expires so a sibling can go on.

Plaintext never reaches the table, a log line or an exception message. The credential's name is
sealed inside the ciphertext too, so a ciphertext copied onto another row does not decrypt as that
row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Connection, Engine

from connector_pipelines.core.db import (
    credentials,
    get_engine,
    is_sqlite,
    retrying_write,
    upsert_insert,
    utcnow,
    write_transaction,
)
from connector_pipelines.core.leases import Leases, new_owner

VAULT_KEYS_ENV = "CONNECTOR_VAULT_KEYS"
LOCK_SCOPE = "vault"
LOCK_LEASE_S = 60.0
LOCK_TIMEOUT_S = 300.0

Value = dict[str, Any] | str

# The project's own command (connector_pipelines.cli), never a Python one-liner.
GENERATE_KEY_COMMAND = "connector-pipelines vault generate-key"
_GENERATE_HINT = f"generate one with `{GENERATE_KEY_COMMAND}`"


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


class LockedCredential:
    """What ``Vault.locked`` yields: the decrypted value and a ``set`` that stores a new one at once."""

    def __init__(self, vault: Vault, name: str, value: Value | None) -> None:
        self._vault = vault
        self.name = name
        self.value = value

    def set(self, new_value: Value) -> None:
        self._vault.put(self.name, new_value)
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
                "`connector-pipelines vault rotate`, then drop it)"
            ) from None
        if not isinstance(envelope, dict) or envelope.get("n") != name:
            raise VaultError(f"credential {name!r} holds a ciphertext sealed for another credential; refusing it")
        return envelope["v"]

    # -- plain operations -------------------------------------------------------------------------
    def put(self, name: str, value: Value) -> None:
        ciphertext = self._encrypt(name, value)
        insert = upsert_insert(self.engine, credentials)
        stmt = insert.on_conflict_do_update(index_elements=[credentials.c.name], set_={
            "ciphertext": insert.excluded.ciphertext, "version": credentials.c.version + 1,
            "updated_at": insert.excluded.updated_at})
        retrying_write(self.engine, lambda conn: conn.execute(stmt, [{
            "name": name, "ciphertext": ciphertext, "version": 1, "updated_at": utcnow()}]))

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
    def locked(self, name: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[LockedCredential]:
        """Exclusive use of one credential across every process on this database.

        Yields an object with ``.value`` (decrypted, or None) and ``.set(new_value)`` (stored at once).
        Waits up to ``timeout_s`` for another holder; the lease is renewed while held and released on exit.
        """
        leases = Leases(self.engine, new_owner(f"vault:{name}"), ttl_s=LOCK_LEASE_S)
        if not leases.wait_for(LOCK_SCOPE, name, timeout_s):
            raise VaultError(f"credential {name!r} stayed locked by another process for {timeout_s:.0f} s")
        leases.start_heartbeat()
        try:
            yield LockedCredential(self, name, self.get(name))
        finally:
            leases.stop_heartbeat()
            leases.release(LOCK_SCOPE, [name])

    def _select(self, conn: Connection, name: str):
        return conn.execute(sa.select(credentials.c.name, credentials.c.ciphertext)
                            .where(credentials.c.name == name)).first()
