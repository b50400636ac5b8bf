"""The analyst sandbox: a DuckDB connection that can read the published tables and nothing else.

:func:`anonymizer.connect` and ``anonymizer query`` register the STATS tables first (as Arrow
datasets read by pyarrow, so they keep working afterwards), then call :func:`lock_down`:

- ``temp_directory`` is emptied before anything else: DuckDB otherwise allows file access
  to ``./.tmp/`` under the working directory even with external access off;
- extensions are never installed or loaded automatically, community extensions are off;
- ``enable_external_access = false``: no file, URL, database or extension is reachable
  (``read_parquet``, ``read_csv``, ``read_text``, ``glob``, ``ATTACH``, ``COPY``,
  ``EXPORT``/``IMPORT DATABASE``, ``INSTALL``/``LOAD``, ``CREATE SECRET`` and Python
  replacement scans are refused);
- ``lock_configuration = true``: no ``SET``/``RESET``/``PRAGMA`` can undo any of this.

:func:`explain` turns DuckDB's refusal into the one-line message the CLI prints.
"""

from __future__ import annotations

import re
from typing import Final

import duckdb

LOCKDOWN: Final[tuple[tuple[str, object], ...]] = (
    # Order matters: the temp directory is added to the allowed directories when set, so
    # it is cleared first and the allow-lists are emptied after it.
    ("temp_directory", ""),
    ("allowed_directories", []),
    ("allowed_paths", []),
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("allow_persistent_secrets", False),
    ("enable_external_access", False),
    ("lock_configuration", True),
)
"""DuckDB settings applied, in this order, by :func:`lock_down`."""

REFUSAL_HINT: Final = (
    "the analyst sandbox, which reads only the published tables (see `anonymizer tables`): "
    "file and URL access, ATTACH, COPY, INSTALL/LOAD and changing settings are disabled"
)


REFUSAL_MESSAGES: Final = re.compile(
    r"configuration has been locked"
    # Features that need an extension (s3 secrets, httpfs URLs): loading one is refused.
    r"|autoload_known_extensions"
    r"|persistent secrets are disabled",
    re.IGNORECASE,
)
"""DuckDB errors other than ``PermissionException`` that are the sandbox saying no."""


class SandboxError(RuntimeError):
    """The sandbox could not be set up (a DuckDB without the needed settings)."""


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Apply :data:`LOCKDOWN` to ``con``; everything registered before stays readable.

    Raises :class:`SandboxError` when a setting cannot be applied: an unlocked connection
    is never handed out.
    """
    for name, value in LOCKDOWN:
        try:
            con.execute(f"SET {name} = ?", [value])
        except duckdb.Error as exc:
            con.close()
            raise SandboxError(f"cannot lock the query connection ({name}): {exc}") from exc
    check = con.execute(
        "SELECT current_setting('enable_external_access'), current_setting('lock_configuration')"
    ).fetchall()
    if check != [(False, True)]:
        con.close()
        raise SandboxError(f"the query connection did not lock (got {check})")


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` is DuckDB refusing something the sandbox forbids."""
    if isinstance(exc, duckdb.PermissionException):
        return True
    return isinstance(exc, duckdb.Error) and REFUSAL_MESSAGES.search(str(exc)) is not None


def explain(exc: duckdb.Error) -> str:
    """One line for the CLI: a sandbox refusal says why; any other error is DuckDB's first
    line (syntax errors, unknown tables and columns)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_refusal(exc):
        return f"query failed: refused by {REFUSAL_HINT} ({first})"
    return f"query failed: {first}"
