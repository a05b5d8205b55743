"""Every SQL statement of the service (besides the migrations), one module per table or aggregate.

Functions take a pool or a connection (`Conn`) and return records or plain values; rules live above, in the
steps and in infosentry.domain.
"""

from __future__ import annotations

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection
