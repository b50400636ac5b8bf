"""Web server access logs into the RAW store: ``import_log`` and its report.

One module per format: :mod:`.combined` (Apache/NGINX combined), :mod:`.common` (Common
Log Format), :mod:`.nginx_json` (NGINX JSON lines).
"""

from anonymizer.importers.importer import LOG_FORMATS, LogFormat, import_log
from anonymizer.importers.report import ImportLogError, ImportReport, Reject

__all__ = ["LOG_FORMATS", "ImportLogError", "ImportReport", "LogFormat", "Reject", "import_log"]
