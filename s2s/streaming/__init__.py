"""Streaming inference: the session that runs a duplex model chunk by chunk, and (later) its metrics."""
