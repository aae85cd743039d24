"""The scheduler's former name, kept so ``bench/gpu.py`` runs unchanged: use
``worker.scheduler``."""

from worker.scheduler import AsrScheduler as AsrLane
from worker.scheduler import Ticket

__all__ = ["AsrLane", "Ticket"]
