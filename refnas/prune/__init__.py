"""Pruning: importance criteria (first-order Taylor and others), gates, surgery, schedules."""
from refnas.prune.importance import TAYLOR_MODES, taylor_importance

__all__ = ["TAYLOR_MODES", "taylor_importance"]
