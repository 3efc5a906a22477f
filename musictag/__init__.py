"""musictag: tag a music library with genres and moods predicted by a CP-ResNet."""

__version__ = "0.1.0"
