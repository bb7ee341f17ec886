"""A face for Pipecat pipelines (needs `pip install '.[pipecat]'`): `DittoVideoService`, placed after the TTS."""

from integrations.pipecat.video import DittoVideoService

__all__ = ["DittoVideoService"]
