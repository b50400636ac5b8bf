"""The RAW store: personally related data with short retention, for the operator only.

Layout under ``raw_dir`` (see :mod:`consent_middleware.raw.layout`)::

    events/date=YYYY-MM-DD/<segment>.parquet   raw access events (schema: RAW_EVENT_SCHEMA)
    ledger/                                    consent ledger segments
    tombstones/                                erasure tombstones
    salts/                                     daily salts for visitor_hash
    requests/                                  visitors' rights requests
    links/                                     receipt id <-> anonymous id, hashed (postal requests)
    quarantine/                                segments found unreadable, moved aside
    imports/                                   import-log history (hashes, counts) and its lock
    compactions/                               merge records of `consent-admin compact`
    pipeline/                                  the anonymizer's run state, locks and spill space
"""

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_FIELDS, RAW_EVENT_SCHEMA, UTM_FIELDS
from consent_middleware.raw.segments import list_segments, write_segment

__all__ = [
    "RAW_EVENT_FIELDS",
    "RAW_EVENT_SCHEMA",
    "UTM_FIELDS",
    "RawLayout",
    "list_segments",
    "write_segment",
]
