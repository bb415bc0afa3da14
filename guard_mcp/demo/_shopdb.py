"""The demo shop's own SQLite file: schema, first-run seed, the writes its tools make, and a read-back.

The shop is a separate program from the guard, so it keeps its own database; the tests and the demo
read it back with `read_state` to show what an allowed call did and what a refused one did not.
Money is stored in cents so a refund of 349.99 stays 349.99.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ShopDB", "ShopError", "default_db_path", "read_state"]

ENV_DB = "SHOP_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, tier TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, item TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL, customer_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, to_addr TEXT NOT NULL, subject TEXT NOT NULL,
    body TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
    user TEXT NOT NULL, role TEXT NOT NULL, granted REAL NOT NULL, PRIMARY KEY (user, role)
);
"""

_CUSTOMERS = [
    ("cus_123", "Ada Lovelace", "ada@example.com", "gold"),
    ("cus_456", "Grace Hopper", "grace@example.com", "standard"),
    ("cus_789", "Alan Turing", "alan@example.com", "standard"),
]
_ORDERS = [
    ("ord_1001", "cus_123", "Mechanical keyboard", 34_900, "EUR", "delivered"),
    ("ord_1002", "cus_123", "USB-C cable", 1_250, "EUR", "delivered"),
    ("ord_1003", "cus_456", "Standing desk", 420_000, "EUR", "shipped"),
    ("ord_1004", "cus_789", "Notebook", 899, "EUR", "processing"),
]
_ROLES = [("alice", "support-agent"), ("bob", "billing-admin")]


class ShopError(Exception):
    """A business rule refused the request (unknown order, refund too large, ...)."""


def default_db_path() -> Path:
    """`$SHOP_DB`, else a file in the system's temporary directory (the demo is throwaway)."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / "guard-mcp-demo" / "shop.db"


def _cents(amount: float) -> int:
    return round(amount * 100)


class ShopDB:
    """One connection per operation: the shop is tiny, and this keeps it safe across threads and
    across several shop processes sharing one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                db.execute(statement)
            if db.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 0:
                db.executemany("INSERT OR IGNORE INTO customers VALUES (?, ?, ?, ?)", _CUSTOMERS)
                db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?)", _ORDERS)
                now = time.time()
                db.executemany("INSERT OR IGNORE INTO roles VALUES (?, ?, ?)", [(u, r, now) for u, r in _ROLES])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            # IMMEDIATE: two shop processes seeding or refunding at once serialise instead of racing.
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- reads ------------------------------------------------------------------------------------

    def lookup_order(self, order_id: str) -> dict[str, Any]:
        with self._tx() as db:
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
            if row is None:
                raise ShopError(f"order `{order_id}` does not exist; check the id (like `ord_1001`)")
            refunded = db.execute(
                "SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ?", (order_id,)
            ).fetchone()[0]
        return {
            "order_id": row["id"],
            "customer_id": row["customer_id"],
            "item": row["item"],
            "amount": row["amount_cents"] / 100,
            "currency": row["currency"],
            "status": row["status"],
            "refunded": refunded / 100,
        }

    # -- writes -----------------------------------------------------------------------------------

    def refund(self, order_id: str, customer_id: str, amount: float, currency: str, reason: str) -> dict[str, Any]:
        cents = _cents(amount)
        with self._tx() as db:
            order = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
            if order is None:
                raise ShopError(f"order `{order_id}` does not exist; check the id (like `ord_1001`)")
            if order["customer_id"] != customer_id:
                raise ShopError(f"order `{order_id}` does not belong to customer `{customer_id}`")
            if order["currency"] != currency:
                raise ShopError(f"order `{order_id}` was paid in {order['currency']}, not `{currency}`")
            refunded = db.execute(
                "SELECT COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ?", (order_id,)
            ).fetchone()[0]
            left = order["amount_cents"] - refunded
            if cents > left:
                raise ShopError(
                    f"refund of `{amount:.2f}` exceeds what is left on order `{order_id}` ({left / 100:.2f} {currency})"
                )
            cur = db.execute(
                "INSERT INTO refunds (order_id, customer_id, amount_cents, currency, reason, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (order_id, customer_id, cents, currency, reason, time.time()),
            )
        return {"refund_id": f"re_{cur.lastrowid}", "order_id": order_id, "amount": cents / 100, "currency": currency}

    def send_email(self, to: str, subject: str, body: str) -> dict[str, Any]:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (to_addr, subject, body, created) VALUES (?, ?, ?, ?)",
                (to, subject, body, time.time()),
            )
        return {"message_id": f"msg_{cur.lastrowid}", "to": to, "queued": True}

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        with self._tx() as db:
            if db.execute("DELETE FROM customers WHERE id = ?", (customer_id,)).rowcount == 0:
                raise ShopError(f"customer `{customer_id}` does not exist; check the id (like `cus_123`)")
            orders = db.execute("DELETE FROM orders WHERE customer_id = ?", (customer_id,)).rowcount
        return {"customer_id": customer_id, "deleted": True, "orders_deleted": orders}

    def grant_role(self, user: str, role: str) -> dict[str, Any]:
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO roles VALUES (?, ?, ?)", (user, role, time.time()))
        return {"user": user, "role": role, "granted": cur.rowcount == 1}


def read_state(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Everything in the shop's database, table by table, in insertion order."""
    db_path = path if path is not None else default_db_path()
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        raise ShopError(f"shop database `{db_path}` cannot be opened; start the shop once or set SHOP_DB") from None
    db.row_factory = sqlite3.Row
    try:
        return {
            table: [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]  # noqa: S608
            for table in ("customers", "orders", "refunds", "outbox", "roles")
        }
    finally:
        db.close()
