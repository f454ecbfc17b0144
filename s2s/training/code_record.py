"""Every checkpoint records the commit of the code that wrote it (`s2s_commit`), so an artifact
exported later, from any checkout, still names the code that trained the model."""

from __future__ import annotations

from typing import Any

import lightning

from s2s.code_version import code_commit

TRAINING_COMMIT_KEY = "s2s_commit"


class CodeCommitInCheckpoint(lightning.Callback):
    """Looks the commit up once per launch (a resumed run may continue on newer code: each
    checkpoint names the launch that wrote it) and stores it in every checkpoint."""

    def __init__(self) -> None:
        self.commit = code_commit()

    def on_save_checkpoint(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[TRAINING_COMMIT_KEY] = self.commit
