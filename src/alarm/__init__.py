"""alarm: align language models with hierarchical rewards (ALaRM) and value-based calibration (VCB)."""

from alarm.errors import AlarmError

__version__ = "0.1.0"
__all__ = ["AlarmError", "__version__"]
