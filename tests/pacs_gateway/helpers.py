"""What several gateway tests build the same way."""

from __future__ import annotations

import logging

from pacs_gateway.metrics import StoreCounters
from pacs_gateway.process import GatewayProcess, GatewaySpec
from pacs_gateway.scp import ScpSettings
from pacs_gateway.spool import Spool


def gateway_process(spool: Spool, scp: ScpSettings, journal_bytes: int = 0) -> GatewayProcess:
    """An SCP child process (not started) writing durably into ``spool``."""
    return GatewayProcess(
        GatewaySpec(
            scp=scp,
            spool_dir=spool.root,
            high_water_bytes=spool.high_water_bytes,
            min_free_bytes=0,
            fsync=True,
            log_level=logging.WARNING,
            journal_bytes=journal_bytes,
        ),
        spool.usage,
        StoreCounters(),
    )
