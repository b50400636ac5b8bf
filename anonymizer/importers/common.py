"""Common Log Format (NCSA): the combined format without referrer and user agent.

``%h %l %u [%d/%b/%Y:%H:%M:%S %z] "%r" %>s %b``. Events get no referrer, user agent or
language, and ``visitor_hash`` is keyed on the IP alone (with the site host). A combined
line is accepted too; its referrer and user agent are ignored.
"""

from __future__ import annotations

import pyarrow as pa

from anonymizer.importers.combined import parse_clf_batch


def parse_common(lines: pa.Array) -> tuple[pa.Table, pa.Array]:
    """A batch of common-format lines (see :func:`~.combined.parse_clf_batch`)."""
    return parse_clf_batch(lines, with_agent=False)
