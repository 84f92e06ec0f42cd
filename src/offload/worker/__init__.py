"""The worker package: `Worker` runs jobs; see `worker.py` for its life cycle."""

from __future__ import annotations

from offload.worker.worker import Worker

__all__ = ["Worker"]
