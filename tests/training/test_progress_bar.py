"""On an accelerator the training losses stay out of the progress bar: Lightning turns bar metrics
into Python numbers after every batch, a read that on a GPU waits for the step's queued work."""

import lightning
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s2s.data.datamodule import DuplexDataModule
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training import token_module
from s2s.training.progress_bar import losses_in_progress_bar
from s2s.training.token_module import TokenDuplexLightningModule


class ScalarReads(TorchDispatchMode):
    """Counts tensors read back as Python numbers (`.item()`, `float(t)`): on a GPU, waits."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_local_scalar_dense":
            self.reads += 1
        return func(*args, **(kwargs or {}))


class CountBatchEndReads(lightning.Callback):
    """Counts the reads in Lightning's per-batch metrics update (`_LoggerConnector.on_batch_end`)."""

    def __init__(self):
        self.reads: list[int] = []

    def on_fit_start(self, trainer, module):
        connector = trainer._logger_connector
        update = connector.on_batch_end

        def counted():
            with ScalarReads() as mode:
                update()
            self.reads.append(mode.reads)

        connector.on_batch_end = counted


def _fit(tiny_corpus, tmp_path) -> tuple[lightning.Trainer, CountBatchEndReads]:
    torch.manual_seed(0)
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1)
    counter = CountBatchEndReads()
    trainer = lightning.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=True, enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[counter],
    )  # fmt: skip
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    trainer.fit(TokenDuplexLightningModule(TokenDuplexModel(config)), datamodule=data)
    return trainer, counter


@pytest.mark.parametrize("accelerator", [False, True], ids=["cpu", "as-on-a-gpu"])
def test_the_losses_reach_the_bar_only_where_reading_them_costs_no_wait(
    accelerator, tiny_corpus, tmp_path, monkeypatch
):
    if accelerator:
        monkeypatch.setattr(token_module, "losses_in_progress_bar", lambda device: False)
    trainer, counter = _fit(tiny_corpus, tmp_path)
    in_bar = [key for key in trainer.progress_bar_metrics if key.startswith("train/")]
    assert len(counter.reads) >= 3, counter.reads  # Lightning updates the metrics at least once a batch
    if accelerator:
        assert in_bar == [] and set(counter.reads) == {0}, (in_bar, counter.reads)
    else:  # the bar's two losses are read after every batch (what an accelerator must not do)
        assert sorted(in_bar) == ["train/loss", "train/token_ce"] and sum(counter.reads) >= 2 * 3, (
            counter.reads
        )


def test_only_the_cpu_reads_losses_for_the_bar():
    assert losses_in_progress_bar(torch.device("cpu")) and losses_in_progress_bar("cpu")
    assert not losses_in_progress_bar(torch.device("cuda", 0)) and not losses_in_progress_bar("meta")
