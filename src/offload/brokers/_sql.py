"""SQL plumbing shared by the SQLite and PostgreSQL brokers: their assets (`schema.sql`,
`queries.sql`, `operate.sql`, migrations) read from the package, and the named
queries of a `.sql` file.

A query is the block after a `-- name: x` line, up to the next; comment lines inside it
are left out (a comment may hold a `%(param)s` that psycopg would try to fill).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["named_queries", "read_asset"]


def read_asset(package: str, *parts: str) -> str:
    """The text of the file `parts` (a path) inside `package`."""
    path = resources.files(package)
    for part in parts:
        path = path.joinpath(part)
    return path.read_text(encoding="utf-8")


def named_queries(package: str, asset: str = "queries.sql") -> dict[str, str]:
    """The `-- name: x` blocks of `package`'s `asset` (a `.sql` file), by name."""
    queries: dict[str, str] = {}
    name: str | None = None
    for line in read_asset(package, asset).splitlines():
        if line.startswith("-- name: "):
            name = line.removeprefix("-- name: ").strip()
            queries[name] = ""
        elif name is not None and line.strip() and not line.lstrip().startswith("--"):
            queries[name] += line + "\n"
    return queries
