"""Data: synthetic dialogues (espeak, synth, tasks, corpus), audio I/O, log-mel features, and the
dataset, batching and LightningDataModule that feed training. Import the submodule you need."""
