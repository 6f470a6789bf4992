"""QIN: Quadratic Interest Network for multimodal CTR prediction, as a plain library."""

__version__ = "0.1.0"
