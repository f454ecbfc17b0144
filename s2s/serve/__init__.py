"""A live full-duplex server: `python -m s2s.serve model=DIR` serves a page (microphone in, speaker
out) and a websocket per dialogue, all dialogues stepped together in one batched streaming session."""
