"""Storage backends: the abstract contracts and the SQLAlchemy implementation."""

from cairn.store.base import MetricPoint, TrackingStore

__all__ = ["MetricPoint", "TrackingStore"]
