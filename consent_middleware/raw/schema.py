"""The raw-event contract (design section 5), shared by the recorder and ``import-log``."""

from __future__ import annotations

import pyarrow as pa

UTM_FIELDS: tuple[str, ...] = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
)
"""The only query parameters ever kept."""

RAW_EVENT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("duration_ms", pa.float64()),
        pa.field("path", pa.string(), nullable=False),
        *(pa.field(name, pa.string()) for name in UTM_FIELDS),
        pa.field("referrer_host", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("language", pa.string()),
        pa.field("visitor_hash", pa.string()),
        pa.field("aid", pa.string()),
        pa.field("purposes", pa.list_(pa.string())),
        pa.field("policy_version", pa.string()),
        pa.field("gpc", pa.bool_()),
        pa.field("source", pa.string(), nullable=False),
    ]
)
"""Arrow schema of one raw event. ``ts`` is UTC with microseconds."""

RAW_EVENT_FIELDS: tuple[str, ...] = tuple(RAW_EVENT_SCHEMA.names)
"""Field names of the raw-event contract, in schema order."""
