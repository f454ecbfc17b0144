"""`load_from_checkpoint` for the s2s Lightning modules, always with `torch.load(weights_only=True)`.

Lightning leaves `weights_only` to torch's default, which an environment variable can turn off; a
checkpoint from someone else must never run code on load, so these modules do not leave it open.
The modules rebuild their model from the config dict in the hyperparameters (s2s.pretrained's
allow-list of model classes), never from a class the file names.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning


class SafeCheckpointLoading(lightning.LightningModule):
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = True, **kwargs):  # fmt: skip
        """Lightning's loader with weights_only=True (False is refused: it would unpickle code)."""
        if weights_only is False:
            raise ValueError(
                "s2s checkpoints hold tensors and plain data only and load with weights_only=True; a file "
                "that needs weights_only=False is not one of them and could run code on load"
            )
        parent = super().load_from_checkpoint
        return parent(checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs)


def built_model(model, model_class: str | None):
    """`model` itself, or the model its config dict describes (`load_from_checkpoint` passes the saved
    hyperparameters: the config dict and, for model v2, `model_class`)."""
    if not isinstance(model, Mapping):
        return model
    from s2s.pretrained import build_model  # s2s.pretrained reads checkpoints through s2s.training

    return build_model(model_class or "DuplexModel", model, "the checkpoint's hyperparameters", False)
