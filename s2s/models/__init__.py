"""Layers, encoder, decoder, duplex model and vocoder; every attention goes through s2s.attention."""
