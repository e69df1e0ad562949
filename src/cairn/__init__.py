"""cairn: experiment tracking and model packaging."""

__version__ = "0.1.0"
