"""The features a training batch carries (log-mel of both channels, the user's pitch track), computed
where the batch is: in the loader workers (CPU, the default) or on the training device once Lightning
has moved the batch there (`DuplexDataModule(features_on="device")`).

Why both: on a many-core GPU host the workers keep up with a small model, but the ~100M model on an
H200 waited ~75 ms a step for them (`experiment=base_gpu`: 2.4 s of one core per 640 s batch, 1.2 s
of it the pitch track), while the GPU computes the same features in milliseconds. The features are
the same functions either way (LogMel, pitch_features), so training and streaming read the same
frames up to float rounding.
"""

from __future__ import annotations

import torch

from s2s.data.audio import audio_as_float
from s2s.data.features import LogMel, LogMelConfig
from s2s.data.pitch import PitchConfig, pitch_features

FEATURES_ON = ("workers", "device")


class BatchFeatures:
    """Fills a DialogueBatch's user_mel, system_mel and (with `user_pitch`) user_pitch, on the
    device its audio is on. The log-mel module is built once per device."""

    def __init__(self, log_mel: LogMelConfig | None = None, user_pitch: bool = False):
        self.log_mel_config = log_mel or LogMelConfig()
        config = self.log_mel_config
        self.pitch_config = PitchConfig(sample_rate=config.sample_rate, hop=config.hop)
        self.user_pitch = user_pitch
        self._log_mels: dict[torch.device, LogMel] = {}

    def __call__(self, batch):
        device = batch.user_audio.device
        log_mel = self._log_mels.get(device)
        if log_mel is None:
            log_mel = self._log_mels[device] = LogMel(self.log_mel_config).to(device)
        # float32 features whatever precision the step runs in (bf16 autocast would round the spectra)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            user_audio = audio_as_float(batch.user_audio)  # int16 PCM travels as such up to here
            batch.user_mel = log_mel(user_audio)
            batch.system_mel = log_mel(audio_as_float(batch.system_audio))
            if self.user_pitch:
                batch.user_pitch = pitch_features(user_audio, self.pitch_config)
        return batch

    def __getstate__(self):  # loader workers get the settings, not modules built for another device
        return {**self.__dict__, "_log_mels": {}}
