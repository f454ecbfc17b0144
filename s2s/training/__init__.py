"""Training: the LightningModule, its schedule, loggers, sample logging and the Hydra entry point."""
