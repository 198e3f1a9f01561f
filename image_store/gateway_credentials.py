"""The region's register of gateway credentials, the assertions already used, and the bearer
tokens handed out for them.

A credential is an id, the hospital it delivers for, an Ed25519 public key and when it was
created and revoked; the region keeps no gateway secret. Bearer tokens are kept only as their
SHA-256, bound to a credential, so a token check and a revocation check are one lookup in the
database every API process shares: a revocation takes effect at once everywhere. Used
assertion ids (``jti``) are kept until the assertion would have expired, so each is
exchanged once.

Kept in the region's state database (the index's: image_store.state.db), one SQL
implementation for SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from image_store.state.db import StateDb, as_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_credentials (
    id TEXT PRIMARY KEY,
    hospital TEXT NOT NULL,
    public_key BLOB NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS gateway_assertions (
    credential_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (credential_id, jti)
);
CREATE INDEX IF NOT EXISTS gateway_assertions_expiry ON gateway_assertions (expires_at);
CREATE TABLE IF NOT EXISTS gateway_tokens (
    token_sha256 TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL REFERENCES gateway_credentials (id),
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_tokens_expiry ON gateway_tokens (expires_at);
"""


@dataclass(frozen=True, slots=True)
class GatewayCredential:
    id: str
    hospital: str
    public_key: bytes
    """Raw Ed25519 public key (32 bytes)."""
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A live bearer token's credential (revoked or not: the caller decides) and expiry."""

    credential: GatewayCredential
    expires_at: float


class GatewayCredentials(Protocol):
    def add(self, credential: GatewayCredential) -> None:
        """Register a new credential (ValueError if its id exists)."""
        ...

    def get(self, credential_id: str) -> GatewayCredential | None: ...

    def list(self, hospital: str | None = None) -> list[GatewayCredential]: ...

    def revoke(self, credential_id: str, *, at: float) -> bool:
        """Revoke a credential (its tokens stay, refused as revoked); False if there is no such
        live credential."""
        ...

    def use_assertion(self, credential_id: str, jti: str, expires_at: float, *, now: float) -> bool:
        """Record an assertion id as used; False if it was used before (a replay)."""
        ...

    def add_token(
        self, token_sha256: str, credential_id: str, expires_at: float, *, now: float
    ) -> None:
        """Keep a token's hash (and drop the tokens expired by ``now``)."""
        ...

    def token(self, token_sha256: str, *, now: float) -> TokenGrant | None:
        """The grant of a token that has not expired, else None."""
        ...

    def close(self) -> None: ...


_COLUMNS = "id, hospital, public_key, created_at, revoked_at"


def _credential(row: tuple[Any, ...]) -> GatewayCredential:
    revoked = row[4]
    return GatewayCredential(
        id=str(row[0]),
        hospital=str(row[1]),
        public_key=bytes(row[2]),
        created_at=float(row[3]),
        revoked_at=None if revoked is None else float(revoked),
    )


class SqlGatewayCredentials:
    def __init__(self, db: StateDb | Path) -> None:
        self.db = as_db(db)
        self.db.ensure_schema(SCHEMA)

    def add(self, credential: GatewayCredential) -> None:
        with self.db.tx("gateway_credentials") as conn:
            try:
                conn.execute(
                    f"INSERT INTO gateway_credentials ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608
                    (
                        credential.id,
                        credential.hospital,
                        credential.public_key,
                        credential.created_at,
                        credential.revoked_at,
                    ),
                )
            except self.db.integrity_errors as exc:
                raise ValueError(f"credential {credential.id!r} exists") from exc

    def get(self, credential_id: str) -> GatewayCredential | None:
        row = (
            self.db.conn()
            .execute(
                f"SELECT {_COLUMNS} FROM gateway_credentials WHERE id = ?",  # noqa: S608
                (credential_id,),
            )
            .fetchone()
        )
        return None if row is None else _credential(row)

    def list(self, hospital: str | None = None) -> list[GatewayCredential]:
        sql = f"SELECT {_COLUMNS} FROM gateway_credentials"  # noqa: S608
        args: tuple[str, ...] = ()
        if hospital is not None:
            sql, args = sql + " WHERE hospital = ?", (hospital,)
        rows = self.db.conn().execute(sql + " ORDER BY created_at, id", args)
        return [_credential(r) for r in rows]

    def revoke(self, credential_id: str, *, at: float) -> bool:
        with self.db.tx("gateway_credentials") as conn:
            cur = conn.execute(
                "UPDATE gateway_credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, credential_id),
            )
            return bool(cur.rowcount)

    def use_assertion(self, credential_id: str, jti: str, expires_at: float, *, now: float) -> bool:
        with self.db.tx("gateway_credentials") as conn:
            conn.execute("DELETE FROM gateway_assertions WHERE expires_at < ?", (now,))
            cur = conn.execute(
                "INSERT INTO gateway_assertions (credential_id, jti, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (credential_id, jti, expires_at),
            )
            return bool(cur.rowcount)

    def add_token(
        self, token_sha256: str, credential_id: str, expires_at: float, *, now: float
    ) -> None:
        with self.db.tx("gateway_credentials") as conn:
            conn.execute("DELETE FROM gateway_tokens WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO gateway_tokens (token_sha256, credential_id, expires_at) "
                "VALUES (?, ?, ?)",
                (token_sha256, credential_id, expires_at),
            )

    def token(self, token_sha256: str, *, now: float) -> TokenGrant | None:
        row = (
            self.db.conn()
            .execute(
                "SELECT c.id, c.hospital, c.public_key, c.created_at, c.revoked_at, t.expires_at "
                "FROM gateway_tokens t JOIN gateway_credentials c ON c.id = t.credential_id "
                "WHERE t.token_sha256 = ? AND t.expires_at > ?",
                (token_sha256, now),
            )
            .fetchone()
        )
        return None if row is None else TokenGrant(_credential(row), float(row[5]))

    def close(self) -> None:
        self.db.close()
