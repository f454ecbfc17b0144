"""Where the Hydra config tree is, so the commands work from a clone and from an installed wheel.

The tree lives at the top of the repository (configs/). A wheel carries the same files as the
package data `s2s/_configs` (setup.py maps the folder in), so `pip install` without a clone can
train and evaluate; a clone or an editable install reads configs/ beside the package.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_configs"  # a wheel's copy of configs/
CLONE = PACKAGE.parent / "configs"  # the repository's tree (a clone, an editable install)


class ConfigDirError(RuntimeError):
    """The config tree is missing or incomplete; the message names what to reinstall."""


def config_dir() -> Path:
    """The absolute path of the config tree: the installed copy if there is one, else the clone's."""
    for candidate in (INSTALLED, CLONE):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigDirError(
        f"s2s finds no Hydra configs: neither {INSTALLED} (an installed wheel) nor {CLONE} (a clone) "
        "holds train.yaml. Reinstall s2s (pip install .) from a clone, whose configs/ the wheel carries"
    )
