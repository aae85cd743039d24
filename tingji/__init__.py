"""tingji (听记): a self-hosted, restart-safe transcription service for Chinese audio."""

__version__ = "0.1.0"
