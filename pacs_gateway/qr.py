"""Query/Retrieve SCP: workstations find and pull priors through the gateway.

C-FIND (patient, study, series and image level; patient and study roots), C-GET and C-MOVE are
answered from a PriorsSource (pacs_gateway.priors): the cloud's priors endpoints over HTTP with
the gateway's credential (HttpPriorsSource), or an index and store on the same machine
(LocalPriorsSource). The source applies the access rule (the gateway's hospital's own studies,
other hospitals' under the patient's consent). The parts, one concern each:

- ``qr_identifiers``: levels, UID lists, dates, the scope rules refusing universal matches;
- ``qr_match``: identifiers to source queries, records to C-FIND responses;
- ``qr_syntax``: the transfer syntax an instance is sent in, transcoding;
- ``qr_handlers``: the pynetdicom handlers, statuses and the audit records.
"""

from __future__ import annotations

from pacs_gateway.priors import LocalPriorsSource, PriorsSource
from pacs_gateway.qr_handlers import (
    STATUS_CANCEL,
    STATUS_FIND_FAILED,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_MOVE_UNKNOWN_DESTINATION,
    STATUS_PENDING,
    STATUS_RETRIEVE_FAILED,
    STATUS_SUCCESS,
    AuditLog,
    QrSettings,
    handle_find,
    handle_get,
    handle_move,
    local_source,
)
from pacs_gateway.qr_identifiers import (
    LEVELS,
    BadIdentifier,
    audited_keys,
    check_find_scope,
    check_retrieve_scope,
    level_of,
    study_query,
)
from pacs_gateway.qr_match import MAX_MATCHES, find_matches, retrieve_matches
from pacs_gateway.qr_syntax import Accepted, send_syntax

__all__ = [
    "LEVELS",
    "MAX_MATCHES",
    "STATUS_CANCEL",
    "STATUS_FIND_FAILED",
    "STATUS_IDENTIFIER_MISMATCH",
    "STATUS_MOVE_UNKNOWN_DESTINATION",
    "STATUS_PENDING",
    "STATUS_RETRIEVE_FAILED",
    "STATUS_SUCCESS",
    "Accepted",
    "AuditLog",
    "BadIdentifier",
    "LocalPriorsSource",
    "PriorsSource",
    "QrSettings",
    "audited_keys",
    "check_find_scope",
    "check_retrieve_scope",
    "find_matches",
    "handle_find",
    "handle_get",
    "handle_move",
    "level_of",
    "local_source",
    "retrieve_matches",
    "send_syntax",
    "study_query",
]
