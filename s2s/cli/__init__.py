"""The commands, installed as console scripts (s2s-train, s2s-eval, s2s-make-data, s2s-train-recognizer);
scripts/*.py call the same mains from a clone. Their Hydra configs come from `s2s.config_dir`."""
