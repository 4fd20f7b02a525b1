"""The single marks' statements, prepared under names of their own and run one layer below psycopg's cursor.

A runner making single marks spends most of its client CPU in Python per statement; the
cursor's share (query conversion, its prepared-statement bookkeeping, result selection) is
about 20 µs of a mark's 55 µs of psycopg work (docs/performance.md, "Four PostgreSQL
writers"). Here each statement is prepared once per connection and then only its
parameters are dumped (one reused :class:`~psycopg.adapt.Transformer`), sent and its result
loaded, through the same non-blocking libpq calls and the connection's own ``wait`` (which
cancels the query on Ctrl-C) that the cursor uses.

The statements' parameters travel in text, each typed by a cast in the SQL or by the column
it is compared with, so one server-side plan fits every call. psycopg drops every prepared
statement of the session (``DEALLOCATE ALL``) after a rollback or a DROP it runs itself;
a statement found missing (SQLSTATE 26000) is prepared again and run once more.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

# SQLSTATE of "prepared statement does not exist".
_MISSING = "26000"
_PLACEHOLDER = re.compile(r"%s")
_names = itertools.count()


def _numbered(sql: str) -> bytes:
    """``sql`` with psycopg's ``%s`` placeholders numbered as the server's ``$1, $2, ...``."""
    if "%" in _PLACEHOLDER.sub("", sql):
        raise ValueError(f"only %s placeholders are supported: {sql[:80]!r}")
    numbers = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql).encode()


class PreparedStatements:
    """Statements prepared on one psycopg connection (autocommit), each run as its own transaction."""

    def __init__(self, connection: Any) -> None:
        from psycopg import errors, generators, pq
        from psycopg.adapt import PyFormat, Transformer

        self.connection = connection
        self._pgconn = connection.pgconn
        self._execute = generators.execute
        self._error_from_result = errors.error_from_result
        self._ok = {pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK}
        self._text = PyFormat.TEXT
        self._transformer = Transformer(connection)
        # sql -> (statement name, parameter formats)
        self._prepared: dict[str, tuple[bytes, list[Any]]] = {}

    def run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows ``sql`` returns with ``params``; psycopg's error of the statement if it fails."""
        with self.connection.lock:
            try:
                return self._run(sql, params)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != _MISSING:
                    raise
                self._prepared.pop(sql, None)
                return self._run(sql, params)

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        found = self._prepared.get(sql)
        if found is None:
            found = self._prepare(sql, len(params))
        name, formats = found
        transformer = self._transformer
        self._pgconn.send_query_prepared(name, transformer.dump_sequence(params, formats))
        result = self._result()
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, tuple)

    def _prepare(self, sql: str, count: int) -> tuple[bytes, list[Any]]:
        name = f"osaa_mark_{next(_names)}".encode()
        self._pgconn.send_prepare(name, _numbered(sql))
        self._result()
        found = self._prepared[sql] = (name, [self._text] * count)
        return found

    def _result(self) -> Any:
        result = self.connection.wait(self._execute(self._pgconn))[-1]
        if result.status not in self._ok:
            raise self._error_from_result(result, encoding=self.connection.info.encoding)
        return result
