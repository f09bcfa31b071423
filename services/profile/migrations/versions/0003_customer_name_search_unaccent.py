"""customers: names searched regardless of accents and letter case ("muller" finds "Müller")

Search compares names as `unaccent_lower(name)`: the `unaccent` extension's default rules
(accents and combining marks dropped, ß -> ss, Æ -> AE, Ø -> O, full-width forms to ASCII),
then lower(). `unaccent()` is STABLE (it reads a dictionary), so an index needs a wrapper
declared IMMUTABLE around the two-argument form with the dictionary named. Its body is
SQL-standard (`RETURN`, PostgreSQL 14+): the function and the dictionary are resolved here,
once, and recorded as dependencies, so search_path does not matter (PostgreSQL 17+ runs
REINDEX, VACUUM and ANALYZE with pg_catalog only, and so does a restore), pg_dump orders the
extension first, and `DROP EXTENSION unaccent` refuses while the index needs it. If
unaccent's rules change (a PostgreSQL upgrade that ships new ones), REINDEX the index.

The planner never inlines an IMMUTABLE function around a STABLE call, and each call through the
SQL-function executor costs ~1.1 µs: a scan of 200,000 names took 220 ms through it against
25 ms for lower(name). That is the substring match with `pii:read`, which no b-tree serves:
it calls `unaccent_lower_stable`, the same body declared STABLE, which the planner inlines to
the C calls (55 ms). Statistics on that expression (the index gave lower(name) its own) let the
planner see that a rare term matches few names and scan in parallel, instead of walking the
created_at index to the end for a page it expects to fill early: a term matching nothing takes
50 ms with them, 106 ms without (33 ms with lower(name)); ANALYZE of customers takes ~50 ms
more. Measured on 250,000 customers (200,000 named; PostgreSQL 18, 2 cores).

Writes (one INSERT of 20,000 new customers, rows bound as arrays as the import does; medians
of 7 to 21 runs per session): the b-tree on the wrapper made it 10-16% slower than the one on
lower(name) when the customers have names (~190 -> ~210 ms, five sessions; a PL/pgSQL
wrapper, ~0.5 µs a call, 2-7%), and changed nothing measurable for customers without a name,
as imports and ingest create them (the function is STRICT). No pg_trgm index for the
substring match: a GIN (unaccent_lower(name) gin_trgm_ops) made the named insert 40-72%
slower (seven sessions), and the nameless one 1-6%, past the few percent we accept on bulk
writes.

The extension is trusted (PostgreSQL 13+): the database's owner creates it, no superuser.

The indexes are built and dropped CONCURRENTLY, outside the migration's transaction: a plain
CREATE INDEX holds off every write to customers while it reads the whole table (and a DROP
INDEX every read and write), and while it waits for a transaction already writing there, the
writes queued behind it wait too. So the migration runs beside live services. The price is a
re-runnable upgrade: the functions and statistics commit before the build, and a build that
fails (a deadlock, a cancel) leaves an invalid index, which the next run drops and builds again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Where the extension lives: created here in the current schema, or by an administrator anywhere.
_EXTENSION_SCHEMA = """
    SELECT quote_ident(n.nspname), quote_literal(quote_ident(n.nspname) || '.unaccent')
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'unaccent'
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    schema, dictionary = op.get_bind().execute(sa.text(_EXTENSION_SCHEMA)).one()
    fold = f"lower({schema}.unaccent({dictionary}::regdictionary, $1))"
    for function, volatility in (
        ("unaccent_lower", "IMMUTABLE"),
        ("unaccent_lower_stable", "STABLE"),
    ):
        op.execute(
            f"CREATE OR REPLACE FUNCTION {function}(text) RETURNS text LANGUAGE sql "
            f"{volatility} STRICT PARALLEL SAFE RETURN {fold}"
        )
    op.execute(
        "CREATE STATISTICS IF NOT EXISTS customers_unaccent_lower_name "
        "ON (unaccent_lower_stable(name)) FROM customers"
    )
    with op.get_context().autocommit_block():
        _build_concurrently("ix_customers_unaccent_lower_name", "unaccent_lower(name)")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_customers_lower_name")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _build_concurrently("ix_customers_lower_name", "lower(name)")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_customers_unaccent_lower_name")
    op.execute("DROP STATISTICS IF EXISTS customers_unaccent_lower_name")
    op.execute("DROP FUNCTION IF EXISTS unaccent_lower_stable(text)")
    op.execute("DROP FUNCTION IF EXISTS unaccent_lower(text)")
    # The extension stays: an administrator may have created it (the service's role could not
    # drop it then), and unused it costs nothing.


def _build_concurrently(index: str, expression: str) -> None:
    """CREATE INDEX CONCURRENTLY on customers, after dropping what a failed build left of it."""
    invalid = op.get_bind().execute(
        sa.text(
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :index AND c.relnamespace = current_schema()::regnamespace"
        ),
        {"index": index},
    )
    if invalid.scalar_one_or_none():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON customers ({expression})")
