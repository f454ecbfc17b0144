"""LightningModule for model v2: teacher-forced passes on the reference tokens, token-level losses.

Losses, logged separately: cross-entropy of the system's token per frame (PAD weighted down, BOS
and EOS up, as NeMo DuplexS2S weights its text channel: the rare decision tokens carry the turn
taking), L1 of the log-mel conditioned on the reference token (nats), CTC of the user's words on the
encoder and cross-entropy of the user's state per frame (speaking / pause / ended / silent).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from s2s.data.batching import DialogueBatch
from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, PAD
from s2s.models import regional_compile
from s2s.models.cuda_graphs import use_cuda_graphs
from s2s.models.token_duplex import TokenDuplexModel, TokenDuplexOutput
from s2s.training.augment import AugmentConfig, mask_frequencies
from s2s.training.fused_clipping import FusedOptimizerClipping
from s2s.training.progress_bar import losses_in_progress_bar
from s2s.training.safe_loading import SafeCheckpointLoading, built_model
from s2s.training.schedule import OptimizerConfig, adamw_warmup_cosine, schedule_steps
from s2s.training.turn_end_separability import OnsetScores, onset_scores

MODEL_CLASS = "TokenDuplexModel"  # recorded in the checkpoint so loaders build the right model


@dataclass(frozen=True)
class TokenLossWeights:
    pad: float = 0.5  # PAD is most frames: weighted down
    bos: float = 2.0  # the decision to answer
    eos: float = 2.0  # the decision to stop
    mel: float = 1.0  # mel L1 / mel_std
    user_ctc: float = 0.2
    user_state: float = 0.5
    # PAUSE frames in the user-state loss (a weighted mean): the pause inside a turn is the rare state
    # the turn decision hinges on (val/turn_end_state_auc says how well it is told from an end). The
    # loss is logit-adjusted, so the weight moves the gradient, not the head's probabilities.
    user_pause: float = 1.0
    # Silence frames (PAUSE or ENDED) within `onset_frames` of the user falling silent, both classes
    # alike: the frames where a pause must be told from an end of turn (later frames are easy: no
    # pause outlasts 0.8 s). A weight that depends on where a frame is, not on its class, leaves the
    # head's probabilities calibrated.
    user_onset: float = 1.0
    onset_frames: int = 20  # 0.8 s at 25 Hz: the corpus's longest pause
    # True: the token cross-entropy is logit-adjusted as the user-state loss is (of logits + log w):
    # the class weights above still move the gradient, but the trained decoder's probabilities stay
    # the corpus's. False (as trained until 2026-12-05): its optimum is P(token) x weight, so BOS's
    # odds against PAD come out bos / pad = 4x the corpus's, and every onset rule answers sooner
    # than the model believes the turn ended (docs/results.md, "The token loss's class weights").
    token_logit_adjusted: bool = False

    def __post_init__(self):
        if self.token_logit_adjusted and not min(self.pad, self.bos, self.eos) > 0:
            raise ValueError(
                "module.weights.token_logit_adjusted takes the log of the class weights: pad, bos and eos "
                f"must be > 0, got {self.pad}, {self.bos}, {self.eos}"
            )
        for name in ("user_pause", "user_onset"):  # class and place weights: a weight of 0 drops frames
            if not getattr(self, name) > 0:
                raise ValueError(f"module.weights.{name} must be > 0, got {getattr(self, name)}")
        frames = self.onset_frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"module.weights.onset_frames must be a whole number >= 1, got {frames}")


def user_state_loss(
    logits: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    pause_weight: float,
    onset_weight: float = 1.0,
    onset_frames: int = 20,
) -> torch.Tensor:
    """The user-state cross-entropy, a weighted mean over `mask`: PAUSE frames weighted
    `pause_weight`, silence frames within `onset_frames` of a silence onset `onset_weight` (the
    two multiply). logits (B, T, states), states (B, T) int64, mask (B, T) bool or float.

    Logit-adjusted (Menon et al., 2021): a class weight w alone moves the head's optimum to
    P(class) * w, and sampling's state_gain would then veto replies by log w more than the head
    hears; the weighted loss of logits + log w keeps the raw logits calibrated (the weight moves
    the gradient only). The onset weight depends on the frame's place, not its class: no adjustment.
    """
    weights = torch.ones(logits.shape[-1], device=logits.device)
    weights[UserState.PAUSE] = pause_weight
    per_frame, frame_weights = class_weighted_ce(logits, states, weights, logit_adjusted=True)
    frame_weights = frame_weights * mask
    if onset_weight != 1.0:
        near = near_silence_onset(states, onset_frames)
        place = torch.where(near, onset_weight, 1.0)
        per_frame, frame_weights = per_frame * place, frame_weights * place
    return (per_frame * mask).sum() / frame_weights.sum().clamp(min=1e-6)


def class_weighted_ce(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor, logit_adjusted: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: the cross-entropy weighted by its target's class weight, and that weight.
    logits (B, T, V), targets (B, T) int64, class_weights (V,). `logit_adjusted` takes it of
    logits + log w (Menon et al., 2021), whose optimum is the targets' own distribution: the weights
    then change how much each class's errors pull, not the probabilities the heads report."""
    logits = logits.float()
    if logit_adjusted:
        logits = logits + class_weights.log()
    per_frame = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, weight=class_weights, reduction="none"
    )
    return per_frame, class_weights[targets]


def token_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    class_weights: torch.Tensor,
    logit_adjusted: bool = False,
) -> torch.Tensor:
    """The system tokens' class-weighted cross-entropy, a weighted mean over `mask`. logits (B, T, V),
    tokens (B, T) int64, mask (B, T) bool or float, class_weights (V,); `logit_adjusted` keeps the
    decoder's probabilities the corpus's (class_weighted_ce)."""
    per_frame, frame_weights = class_weighted_ce(logits, tokens, class_weights, logit_adjusted)
    return (per_frame * mask).sum() / (frame_weights * mask).sum().clamp(min=1e-6)


def near_silence_onset(states: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T) bool: PAUSE or ENDED frames at most `frames` after the user's last SPEAKING frame (a
    window that starts before the first speech has no onset in it: False there)."""
    time = torch.arange(states.shape[1], device=states.device).expand_as(states)
    speaking = states == UserState.SPEAKING
    last_speech = torch.where(speaking, time, -1).cummax(dim=1).values
    silent = (states == UserState.PAUSE) | (states == UserState.ENDED)
    return silent & (last_speech >= 0) & (time - last_speech <= frames)


@dataclass
class TokenLosses:
    token_ce: torch.Tensor
    mel_l1: torch.Tensor  # nats
    user_ctc: torch.Tensor
    user_state_ce: torch.Tensor
    total: torch.Tensor
    token_accuracy: torch.Tensor  # on frames whose reference token is not PAD


class TokenDuplexLightningModule(FusedOptimizerClipping, SafeCheckpointLoading):
    def __init__(
        self,
        model: TokenDuplexModel | Mapping,
        optimizer: OptimizerConfig | Mapping | None = None,
        weights: TokenLossWeights | Mapping | None = None,
        augment: AugmentConfig | Mapping | None = None,
        model_class: str | None = None,
        compile_blocks: bool = False,
        cuda_graphs: bool = False,
        cuda_graph_row_bucket: int | None = None,
    ):
        """`model` is a TokenDuplexModel, or its config as a dict with `model_class`, as
        `load_from_checkpoint` passes the saved hyperparameters. `compile_blocks`: `torch.compile`
        each transformer block when fitting starts (s2s/models/regional_compile.py). `cuda_graphs`:
        replay the encoder's and decoder's blocks as CUDA graphs in training steps that allow it
        (s2s/models/cuda_graphs.py); with both, the graphs capture compiled blocks (the model's own
        blocks stay eager). `cuda_graph_row_bucket` (frames): inside the graphs, a padded batch's
        valid frames packed into one row of a multiple of that many frames, where attention runs
        on the CuTe kernels (s2s/models/row_packing.py; one graph per bucket); None: padded."""
        super().__init__()
        model = built_model(model, model_class)
        if not isinstance(model, TokenDuplexModel):
            raise TypeError(
                f"TokenDuplexLightningModule trains a TokenDuplexModel, got {type(model).__name__}"
            )
        self.model = model
        if not isinstance(optimizer, OptimizerConfig):
            optimizer = OptimizerConfig.from_mapping(optimizer)
        if not isinstance(weights, TokenLossWeights):
            weights = TokenLossWeights(**dict(weights or {}))
        if not isinstance(augment, AugmentConfig):
            augment = AugmentConfig(**dict(augment or {"freq_masks": 0}))
        self.optimizer_config, self.weights, self.augment = optimizer, weights, augment
        # the token loss's class weights, built once and moved with the module (not saved: the
        # weights' config is); a buffer so no step rebuilds them on the device
        class_weights = torch.ones(model.config.system_vocab)
        class_weights[PAD], class_weights[BOS], class_weights[EOS] = weights.pad, weights.bos, weights.eos
        self.register_buffer("token_class_weights", class_weights, persistent=False)
        if not isinstance(compile_blocks, bool):
            raise TypeError(f"compile_blocks must be true or false, got {compile_blocks!r}")
        self.compile_blocks = compile_blocks
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be true or false, got {cuda_graphs!r}")
        self.cuda_graphs = cuda_graphs
        bucket = cuda_graph_row_bucket
        if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1):
            raise ValueError(
                f"cuda_graph_row_bucket must be a positive number of frames or null (padded), got {bucket!r}"
            )
        self.cuda_graph_row_bucket = bucket
        self.save_hyperparameters(
            {
                "model_class": MODEL_CLASS,
                "model": asdict(model.config),
                "optimizer": asdict(optimizer),
                "weights": asdict(weights),
                "augment": asdict(augment),
                "compile_blocks": compile_blocks,
                "cuda_graphs": cuda_graphs,
                "cuda_graph_row_bucket": bucket,
            }
        )
        # The first validation batch and its teacher-forced output: the samples callback draws them.
        self.last_validation: tuple[DialogueBatch, TokenDuplexOutput] | None = None
        # Pause-versus-turn-end scores at the user's silence onsets over a validation epoch.
        self.onset_scores = OnsetScores()

    def on_fit_start(self) -> None:
        # at fit only: a checkpoint loaded for evaluation or streaming runs eager
        processes = self._trainer.world_size if self._trainer is not None else 1
        if self.cuda_graphs and processes > 1:
            warnings.warn(
                f"module.cuda_graphs (with the blocks compiled inside them) is off in this "
                f"{processes}-process run: the graphed blocks are tested on one GPU only (DDP's "
                "gradient hooks around a replayed backward are not); the steps run eagerly",
                stacklevel=2,
            )
            return
        if self.cuda_graphs:  # with compile_blocks, the blocks are compiled inside the graphs only
            # packed rows: one graph per bucket of real frames, so room for more shapes
            shapes = 4 if self.cuda_graph_row_bucket is None else 8
            use_cuda_graphs(self.model, shapes, self.compile_blocks, self.cuda_graph_row_bucket)
        elif self.compile_blocks:
            regional_compile.compile_blocks(self.model)
        if self.compile_blocks:
            regional_compile.compile_heads(self.model)

    def setup(self, stage: str) -> None:
        """Refuse a corpus whose task's vocabularies are not the model's (the data module is set up
        first), before an out-of-range token id fails somewhere inside the model."""
        datasets = getattr(self.trainer.datamodule, "datasets", None) or {}
        vocabularies = next((d.vocabularies for d in datasets.values() if d.vocabularies), None)
        if vocabularies is None:
            return
        c, system, user = self.model.config, vocabularies.system.size, vocabularies.user.size
        if (c.system_vocab, c.user_vocab) != (system, user):
            from s2s.training.run import LaunchConfigError  # run.py imports this module

            raise LaunchConfigError(
                f"the model's vocabularies (system_vocab={c.system_vocab}, user_vocab={c.user_vocab}) are "
                f"not those of the corpus's task (PAD, BOS, EOS + its words: {system} system, {user} "
                f"user tokens): train with model.config.system_vocab={system} model.config.user_vocab={user}"
            )

    def run(
        self, batch: DialogueBatch, chunk, augment: bool = False
    ) -> tuple[TokenDuplexOutput, TokenLosses]:
        if batch.system_tokens is None:
            raise ValueError(
                "model v2 trains on token targets: build the data module with token_targets=true "
                "(configs/data/*.yaml do; experiment=v1_baseline trains model v1 without them)"
            )
        c = self.model.config
        r = c.mel_per_frame
        frames = batch.user_mel.shape[1] // r
        lengths = batch.frame_lengths // r
        mask = torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
        # host copies where the batch has them: packing and the CTC loss then never wait for the device
        host_lengths = (
            lengths if batch.host_frame_lengths is None else torch.tensor(batch.host_frame_lengths) // r
        )
        word_counts = batch.user_word_counts
        if batch.host_user_word_counts is not None:
            word_counts = torch.tensor(batch.host_user_word_counts)
        tokens = batch.system_tokens[:, :frames]
        user_mel = batch.user_mel
        if augment:
            user_mel = mask_frequencies(user_mel, self.augment, fill=c.mel_mean)
        user_mel = self.model.user_input(user_mel, batch.user_pitch)
        out = self.model(user_mel, tokens, batch.system_mel, lengths=host_lengths, chunk=chunk)
        real = mask.sum().clamp(min=1)

        token_ce = token_loss(
            out.token_logits,
            tokens,
            mask,
            self.token_class_weights.float(),
            self.weights.token_logit_adjusted,
        )

        target_mel = batch.system_mel[:, : frames * r].float()
        mel_mask = mask.repeat_interleave(r, dim=1)[..., None]
        mel_l1 = ((out.mel.float() - target_mel).abs() * mel_mask).sum() / (
            mel_mask.sum().clamp(min=1) * c.n_mels
        )

        log_probs = out.user_ctc_logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        user_ctc = torch.nn.functional.ctc_loss(
            log_probs, batch.user_words, host_lengths, word_counts, blank=PAD, reduction="sum",
            zero_infinity=True,
        ) / real  # fmt: skip

        states = batch.user_state[:, :frames]
        w = self.weights
        user_state_ce = user_state_loss(
            out.user_state_logits, states, mask, w.user_pause, w.user_onset, w.onset_frames
        )
        total = token_ce + w.mel * mel_l1 / c.mel_std + w.user_ctc * user_ctc + w.user_state * user_state_ce
        decisions = mask & (tokens != PAD)
        correct = (out.token_logits.argmax(-1) == tokens) & decisions
        accuracy = correct.sum() / decisions.sum().clamp(min=1)
        return out, TokenLosses(token_ce, mel_l1, user_ctc, user_state_ce, total, accuracy)

    def draw_chunks(self, batch_size: int) -> torch.Tensor:
        """One training chunk size per dialogue, on the host: the chunk spec reads them there (to
        check them and to choose the attention path) without waiting for the device, and the model
        moves them to it."""
        sizes = torch.tensor(self.model.config.train_chunks, dtype=torch.int32)
        return sizes[torch.randint(len(sizes), (batch_size,))]

    def _log(self, stage: str, losses: TokenLosses, size: int) -> None:
        sync = stage == "val"
        in_bar = sync or losses_in_progress_bar(self.device)  # a per-step read on a GPU waits
        for name in ("total", "token_ce", "mel_l1", "user_ctc", "user_state_ce", "token_accuracy"):
            key = f"{stage}/{'loss' if name == 'total' else name}"
            value = getattr(losses, name)
            bar = in_bar and name in ("total", "token_ce")
            self.log(key, value, prog_bar=bar, batch_size=size, sync_dist=sync)

    def training_step(self, batch: DialogueBatch, batch_index: int) -> torch.Tensor:
        _, losses = self.run(batch, self.draw_chunks(len(batch)), augment=True)
        self._log("train", losses, len(batch))
        return losses.total

    def validation_step(self, batch: DialogueBatch, batch_index: int) -> None:
        out, losses = self.run(batch, self.model.config.chunk)
        self._log("val", losses, len(batch))
        if batch_index == 0:
            self.last_validation = (batch, out)
        if batch.user_state is None:
            return
        lengths = batch.frame_lengths // self.model.config.mel_per_frame
        self.onset_scores.add(
            onset_scores(out.user_state_logits, out.token_logits, batch.user_state, lengths, BOS)
        )

    def on_validation_epoch_start(self) -> None:
        self.onset_scores = OnsetScores()

    def on_validation_epoch_end(self) -> None:
        """val/turn_end_state_auc and val/turn_end_bos_auc (turn_end_separability.py); under DDP the
        mean of the ranks' areas, each over its share of the dialogues."""
        aucs = self.onset_scores.aucs()
        for name in ("state_auc", "bos_auc"):  # every rank logs both (NaN: no pause or no turn end)
            self.log(f"val/turn_end_{name}", aucs.get(name, float("nan")), sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.optimizer_config, schedule_steps(self.trainer))
