"""s2s: a full-duplex speech-to-speech research framework built on chunk-causal attention."""

__version__ = "0.1.0"
