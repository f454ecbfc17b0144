"""Whether a training step's losses go to the progress bar.

Lightning turns every progress-bar metric into a Python number after each batch (`.item()` in
`_LoggerConnector.on_batch_end`). On a GPU that read waits for all the work queued so far, so each
step ends waiting for its own backward and optimizer, and the host cannot fetch, copy and featurize
the next batch while the GPU still computes (the base recipe on an H200 spent ~60 ms a step between
steps against 59 ms in them; docs/benchmarks.md). So on an accelerator the training losses stay out
of the bar and reach the logs every `log_every_n_steps`; validation figures, once per validation,
still go to it, and on the CPU (nothing queued) the bar shows the losses as before.
"""

from __future__ import annotations

import torch


def losses_in_progress_bar(device: torch.device) -> bool:
    """True where reading a loss back each step costs no waiting: the CPU."""
    return torch.device(device).type == "cpu"
