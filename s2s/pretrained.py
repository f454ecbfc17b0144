"""Self-contained model artifacts: what a trained duplex model needs to be used, in one folder.

    config.json        format, model class (an allow-list: DuplexModel, TokenDuplexModel), config fields
    model.safetensors  the weights (safetensors: tensors only)
    task.json          the task it was trained on and its token vocabularies (id -> name), when known
    recipe.json        the resolved training config (plain JSON), the checkpoint and step it came from,
                       and the git commit of the code that wrote the artifact
    metrics.json       its stream_eval figures, when given
    README.md          a model card generated from the above

Loading reads JSON and safetensors only, so an artifact from someone else can never run code. The
same call loads a Lightning training checkpoint (.ckpt, as scripts/train.py writes it) with
`torch.load(weights_only=True)`. An artifact is written to a temporary folder beside the target and
renamed into place, and an existing one is replaced only when asked.

    python -m s2s.pretrained export checkpoint=RUN_DIR|CKPT out=DIR [metrics=...]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import yaml
from safetensors import SafetensorError

from s2s.cli_options import OptionError, boolean, optional, parse_options
from s2s.code_version import code_commit
from s2s.data.tokens import SPECIALS, TokenVocabulary
from s2s.data.words import VocabularyError
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig, as_validated
from s2s.training.checkpoints import CheckpointError, load_checkpoint
from s2s.training.code_record import TRAINING_COMMIT_KEY

FORMAT = "s2s-pretrained"
VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TASK_FILE = "config.json", "model.safetensors", "task.json"
RECIPE_FILE, METRICS_FILE, CARD_FILE = "recipe.json", "metrics.json", "README.md"
# The only classes an artifact may name: loading builds one of these, never a class the file names.
MODEL_CLASSES: dict[str, tuple[type, type]] = {
    "DuplexModel": (DuplexModel, DuplexConfig),
    "TokenDuplexModel": (TokenDuplexModel, TokenDuplexConfig),
}
USE_HINT = (
    "pass a directory written by save_pretrained or `python -m s2s.pretrained export`, a training "
    "checkpoint (outputs/train/<run>/checkpoints/last.ckpt), or a training run directory (its best "
    "checkpoint)"
)
EXPORT_HINT = "re-export it: python -m s2s.pretrained export checkpoint=<run>/checkpoints/last.ckpt out=DIR"

Model = DuplexModel | TokenDuplexModel


class PretrainedError(RuntimeError):
    """A model artifact that cannot be written or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class Provenance:
    """What is known about a model besides its weights (each None when unknown)."""

    task: dict | None = None  # the task record (corpus.json recipe.task)
    vocabularies: dict[str, TokenVocabulary] | None = None  # "system" and "user" token vocabularies
    recipe: dict | None = None  # the resolved Hydra training config
    training: dict | None = None  # the checkpoint it came from and its global step
    commit: dict | None = None  # {"commit": sha, "dirty": bool} of the code that wrote the artifact
    metrics: dict | None = None  # stream_eval's metrics.json


@dataclass
class Pretrained:
    model: Model
    provenance: Provenance
    path: Path


# -- building a model from a config, checking weights against it -----------------------------------------


def model_class_name(model: torch.nn.Module) -> str:
    for name, (cls, _) in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise PretrainedError(
        f"save_pretrained saves the s2s duplex models ({', '.join(MODEL_CLASSES)}), got "
        f"{type(model).__name__}"
    )


def build_model(model_class: str, config: Mapping, where: str, all_fields: bool = True) -> Model:
    """A fresh model of an allow-listed class from its config fields (`where` names their source).

    Unknown fields are refused; missing ones too when `all_fields` (an artifact writes them all;
    an older training checkpoint may lack newer fields, which then take their defaults)."""
    if model_class not in MODEL_CLASSES:
        raise PretrainedError(
            f"{where} names model class {model_class!r}, which s2s does not build; known classes: "
            f"{', '.join(MODEL_CLASSES)}. The artifact is from another program or a newer s2s"
        )
    if not isinstance(config, Mapping):
        raise PretrainedError(f"{where}: the model config is a {type(config).__name__}, not an object")
    model_cls, config_cls = MODEL_CLASSES[model_class]
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(config) - set(names) - {"_target_"})
    missing = [name for name in names if name not in config] if all_fields else []
    if unknown or missing:
        parts = [
            f"unknown field(s) {unknown}" if unknown else "",
            f"missing field(s) {missing}" if missing else "",
        ]
        raise PretrainedError(
            f"{where}: the {model_class} config does not match this s2s's {config_cls.__name__} "
            f"({'; '.join(p for p in parts if p)}). The artifact was written by another version of "
            f"s2s: load it with that version, or {EXPORT_HINT}"
        )
    try:
        values = {k: v for k, v in config.items() if k in names}
        return model_cls(config_cls(**values))
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{where}: the {model_class} config is invalid ({error})") from error


def load_weights(model: Model, weights: Mapping[str, torch.Tensor], where: str) -> None:
    """Load `weights` into `model`, refusing missing, unexpected or differently shaped tensors by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{name}: {tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} for the config"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensor(s) ({', '.join(missing[:3])}...)")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s) ({', '.join(unexpected[:3])}...)")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:3])})")
        raise PretrainedError(
            f"{where} does not fit the {type(model).__name__} its config describes: "
            f"{', '.join(problems)}. The weights and the config come from different models; {EXPORT_HINT}"
        )
    floating = [name for name, tensor in weights.items() if not tensor.is_floating_point()]
    if floating:
        raise PretrainedError(f"{where}: tensor(s) {floating[:3]} are not floating point; {EXPORT_HINT}")
    model.load_state_dict(dict(weights))


# -- saving ---------------------------------------------------------------------------------------------


def save_pretrained(
    model: Model,
    directory: str | os.PathLike,
    *,
    task: Mapping | None = None,
    vocabularies=None,
    recipe=None,
    metrics: Mapping | None = None,
    training: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as an artifact in `directory` (atomically; an existing artifact is replaced only
    with `overwrite`). `vocabularies`: TokenVocabularies or {"system": ..., "user": ...} of
    TokenVocabulary or word lists; for model v2 they default to the task's. `recipe`: the training
    config (a Hydra DictConfig or a mapping), stored as plain JSON."""
    directory = Path(directory)
    model_class = model_class_name(model)
    vocabularies = _vocabularies(model, task, vocabularies)
    config = dataclasses.asdict(model.config)
    files = {
        CONFIG_FILE: _json(
            {"format": FORMAT, "version": VERSION, "model_class": model_class, "config": config}, "config"
        ),
        WEIGHTS_FILE: safetensors.torch.save(
            {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()},
            metadata={"format": "pt", "s2s_model_class": model_class},
        ),
    }
    if task is not None or vocabularies is not None:
        names = (
            None if vocabularies is None else {k: v.decode(range(v.size)) for k, v in vocabularies.items()}
        )
        files[TASK_FILE] = _json({"task": _plain(task, "task"), "vocabularies": names}, "task")
    provenance = Provenance(
        task=_plain(task, "task"),
        vocabularies=vocabularies,
        recipe=_plain(recipe, "recipe"),
        training=_plain(training, "training"),
        commit=code_commit(),
        metrics=_plain(metrics, "metrics"),
    )
    files[RECIPE_FILE] = _json(
        {"recipe": provenance.recipe, "training": provenance.training, "commit": provenance.commit}, "recipe"
    )
    if metrics is not None:
        files[METRICS_FILE] = _json(provenance.metrics, "metrics")
    from s2s.model_card import model_card

    card = model_card(model_class, config, model.parameter_count(), provenance)
    files[CARD_FILE] = card.encode("utf-8")
    _write_directory(directory, files, overwrite)
    return directory


def _vocabularies(model: Model, task, vocabularies) -> dict[str, TokenVocabulary] | None:
    """{"system", "user"} vocabularies, checked against model v2's sizes (None for model v1 without any)."""
    if vocabularies is None and task is not None and isinstance(model, TokenDuplexModel):
        try:
            vocabularies = {s: TokenVocabulary.from_task(dict(task), s) for s in ("system", "user")}
        except VocabularyError as error:
            raise PretrainedError(f"cannot read the token vocabularies from the task: {error}") from error
    if vocabularies is None:
        return None
    if not isinstance(vocabularies, Mapping):  # TokenVocabularies (s2s.data.dataset)
        vocabularies = {"system": vocabularies.system, "user": vocabularies.user}
    if set(vocabularies) != {"system", "user"}:
        raise PretrainedError(f"vocabularies must name 'system' and 'user', got {sorted(vocabularies)}")
    result = {
        speaker: v if isinstance(v, TokenVocabulary) else TokenVocabulary(tuple(v))
        for speaker, v in vocabularies.items()
    }
    if isinstance(model, TokenDuplexModel):
        c = model.config
        sizes = (result["system"].size, result["user"].size)
        if sizes != (c.system_vocab, c.user_vocab):
            raise PretrainedError(
                f"the vocabularies ({sizes[0]} system, {sizes[1]} user tokens with PAD, BOS, EOS) are not "
                f"the model's (system_vocab={c.system_vocab}, user_vocab={c.user_vocab}): pass the "
                "vocabularies of the task the model was trained on"
            )
    return result


def _plain(value, what: str):
    """`value` as plain JSON data (a Hydra DictConfig resolved), or an error naming `what`."""
    if value is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise PretrainedError(
            f"the {what} must be plain JSON data (dicts, lists, strings, finite numbers): {error}"
        ) from error


def _json(value, what: str) -> bytes:
    return (json.dumps(_plain(value, what), indent=1, allow_nan=False) + "\n").encode("utf-8")


def _write_directory(target: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write `files` into a temporary folder beside `target`, fsynced, then rename it into place."""
    if target.exists():
        if not overwrite:
            raise PretrainedError(
                f"{target} already exists; pass overwrite=True (export: overwrite=true) to replace it, "
                "or write to another directory"
            )
        if not _is_artifact(target) and not (target.is_dir() and not any(target.iterdir())):
            raise PretrainedError(
                f"{target} exists and is not an s2s model artifact (no {CONFIG_FILE} of format {FORMAT!r}); "
                "refusing to replace it even with overwrite=True: write to another directory"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        for name, data in files.items():
            with open(temp / name, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        if target.exists():
            os.rename(target, old)
            os.rename(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)  # put the previous artifact back
        raise


def _is_artifact(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# -- loading --------------------------------------------------------------------------------------------


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """The model of an artifact directory or a training checkpoint, in eval mode on `device`."""
    return load_artifact(path, device).model


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> Pretrained:
    """The model and what is known about it, from an artifact directory or a training checkpoint."""
    path = Path(path)
    if not path.exists():
        raise PretrainedError(f"model {path} does not exist; {USE_HINT}")
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / "checkpoints").is_dir():
        path = run_checkpoint(path)
    if path.is_dir():
        model, provenance = _read_directory(path)
    elif path.suffix == ".safetensors" or path.name == CONFIG_FILE:
        raise PretrainedError(f"{path} is one file of a model artifact: pass its directory, {path.parent}")
    else:
        model, provenance = _read_checkpoint(path)
    return Pretrained(model.to(device).eval(), provenance, path)


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a training run chose: its best on the monitored score (`best-*-score<S>.ckpt`,
    the highest S if it kept several), else `last.ckpt` (a run that never logged the score)."""
    folder = Path(run_dir) / "checkpoints"
    scored = []
    for candidate in folder.glob("best-*.ckpt"):
        match = re.search(r"score(-?\d+(?:\.\d+)?)\.ckpt$", candidate.name)
        if match:
            scored.append((float(match.group(1)), candidate.name, candidate))
    if scored:
        return max(scored)[2]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise PretrainedError(
        f"{run_dir} is a training run directory without checkpoints in {folder}: train it first, "
        f"or pass a checkpoint file or a model artifact; {USE_HINT}"
    )


def _read_directory(path: Path) -> tuple[Model, Provenance]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise PretrainedError(f"{path} holds no {CONFIG_FILE}: it is not an s2s model artifact; {USE_HINT}")
    record = _read_json(config_path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise PretrainedError(
            f"{config_path} is not an s2s model config (format {found!r}, expected {FORMAT!r}); {USE_HINT}"
        )
    if record.get("version") != VERSION:
        raise PretrainedError(
            f"{config_path} is of artifact version {record.get('version')!r}; this s2s reads version "
            f"{VERSION}: load it with the s2s that wrote it, or {EXPORT_HINT}"
        )
    model = build_model(record.get("model_class"), record.get("config"), str(config_path))
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise PretrainedError(f"{path} lacks {WEIGHTS_FILE}: the artifact is incomplete; {EXPORT_HINT}")
    try:
        weights = safetensors.torch.load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise PretrainedError(f"{weights_path} is corrupt or truncated ({error}); {EXPORT_HINT}") from error
    load_weights(model, weights, str(weights_path))
    task = _read_json(path / TASK_FILE) if (path / TASK_FILE).is_file() else {}
    recipe = _read_json(path / RECIPE_FILE) if (path / RECIPE_FILE).is_file() else {}
    metrics = _read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else None
    provenance = Provenance(
        task=task.get("task"),
        vocabularies=_read_vocabularies(task.get("vocabularies"), path / TASK_FILE),
        recipe=recipe.get("recipe"),
        training=recipe.get("training"),
        commit=recipe.get("commit"),
        metrics=metrics,
    )
    return model, provenance


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{path} is not readable JSON ({error}); {EXPORT_HINT}") from error


def _read_vocabularies(names, where: Path) -> dict[str, TokenVocabulary] | None:
    if names is None:
        return None
    try:
        result = {}
        for speaker in ("system", "user"):
            if tuple(names[speaker][: len(SPECIALS)]) != SPECIALS:
                raise VocabularyError(f"the {speaker} vocabulary does not start with {SPECIALS}")
            result[speaker] = TokenVocabulary(tuple(names[speaker][len(SPECIALS) :]))
        return result
    except (KeyError, TypeError, VocabularyError) as error:
        raise PretrainedError(f"{where}: the vocabularies are malformed ({error}); {EXPORT_HINT}") from error


def _read_checkpoint(path: Path, corpus: Path | None = None) -> tuple[Model, Provenance]:
    """A training checkpoint, read with weights_only=True; the recipe from its run's config.yaml and
    the task from the corpus record the recipe points at (or `corpus`), when they are there."""
    state = load_checkpoint(path)
    hyper = state.get("hyper_parameters")
    if not isinstance(hyper, Mapping) or not isinstance(hyper.get("model"), Mapping):
        raise PretrainedError(
            f"checkpoint {path} has no model config in its hyper_parameters: it was not written by s2s's "
            "training modules (scripts/train.py); the model cannot be rebuilt from it"
        )
    where = f"checkpoint {path} (hyper_parameters)"
    model = build_model(hyper.get("model_class", "DuplexModel"), hyper["model"], where, all_fields=False)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    load_weights(model, weights, f"checkpoint {path} (state_dict)")
    recipe = _run_recipe(path)
    task = _corpus_task(corpus if corpus is not None else _recipe_corpus(recipe))
    vocabularies = None
    if task is not None and isinstance(model, TokenDuplexModel):
        try:
            vocabularies = _vocabularies(model, task, None)
        except PretrainedError:
            vocabularies = None  # the corpus found is not the one trained on: no vocabulary is better
            task = None
    training = {
        "checkpoint": str(path),
        "global_step": int(state["global_step"]),
        "epoch": state.get("epoch"),
        "commit": state.get(TRAINING_COMMIT_KEY),  # the code of the launch that wrote the checkpoint
        "state_gain": _chosen_state_gain(state),  # sampling's gain chosen on validation, or None
        "history_seconds": _validated_history(state),  # the history it was chosen streaming with
        "onset_quantile": _quantile_or_none(_free_running_record(state).get("onset_quantile")),
        "stop_gain": _gain_or_none(_free_running_record(state).get("stop_gain")),
    }
    return model, Provenance(task=task, vocabularies=vocabularies, recipe=recipe, training=training)


def _chosen_state_gain(state: Mapping) -> float | None:
    """The user-state gain the free-running validation chose at this checkpoint's validation
    (s2s.training.free_running, `state_gains`), kept in its callback state; None if it chose none."""
    return _gain_or_none(_free_running_record(state).get("state_gain"))


def _validated_history(state: Mapping) -> float | None:
    """The streaming history (seconds) the free-running validation attended to, as its callback
    state keeps it; None if unbounded by it (the model's left_chunks applied)."""
    return _history_or_none(_free_running_record(state).get("history_seconds"))


def _free_running_record(state: Mapping) -> Mapping:
    """The free-running validation callback's state in a checkpoint ({} if it has none)."""
    callbacks = state.get("callbacks")
    record = callbacks.get("FreeRunningValidation") if isinstance(callbacks, Mapping) else None
    return record if isinstance(record, Mapping) else {}


def validated_history(provenance: Provenance) -> float | None:
    """The streaming history in seconds a model's checkpoint was chosen with (free-running
    validation's `history_seconds`), or None: then the model's own left_chunks apply."""
    return _history_or_none((provenance.training or {}).get("history_seconds"))


def _history_or_none(seconds) -> float | None:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 < seconds < math.inf:
        return float(seconds)
    return None


def validated_onset_quantile(provenance: Provenance) -> float | None:
    """The onset quantile (sampling.onset_quantile) a model's checkpoint was chosen decoding with, or
    None: it was chosen with drawn onsets (or the checkpoint does not say)."""
    return _quantile_or_none((provenance.training or {}).get("onset_quantile"))


def _quantile_or_none(value) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value < 1.0:
        return float(value)
    return None


def validated_stop_gain(provenance: Provenance) -> float | None:
    """The stop gain (sampling.stop_gain) a model's checkpoint was chosen decoding with, or None: the
    checkpoint does not say (it predates the gain: it was decoded without one)."""
    return _gain_or_none((provenance.training or {}).get("stop_gain"))


def chosen_state_gain(provenance: Provenance) -> float | None:
    """The user-state gain a model's training chose on validation (a checkpoint, or an artifact
    exported from one), or None: then sampling's default applies."""
    return _gain_or_none((provenance.training or {}).get("state_gain"))


def validated_sampling(
    sampling: SamplingConfig,
    provenance: Provenance,
    *,
    state_gain: float | None = None,
    onset_quantile=None,
    stop_gain: float | None = None,
) -> SamplingConfig:
    """`sampling` with each decoding rule (state gain, onset rule, stop gain) as given, else as the
    loaded model's run chose or validated it (token_sampling.as_validated): what `s2s.infer` and
    `s2s.serve` decode with."""
    decoded, _ = as_validated(
        sampling, state_gain=state_gain, onset_quantile=onset_quantile, stop_gain=stop_gain,
        chosen_gain=chosen_state_gain(provenance), validated_quantile=validated_onset_quantile(provenance),
        validated_stop=validated_stop_gain(provenance),
    )  # fmt: skip
    return decoded


def require_model(path: str | os.PathLike) -> Path:
    """`path` if it exists, else the error that says how to get a model there."""
    path = Path(path)
    if not path.exists():
        raise PretrainedError(
            f"model {path} does not exist; train one (python scripts/train.py) or pass "
            "model=DIR (python -m s2s.pretrained export) or model=RUN/checkpoints/last.ckpt"
        )
    return path


def _gain_or_none(gain) -> float | None:
    if isinstance(gain, int | float) and not isinstance(gain, bool) and math.isfinite(gain) and gain >= 0:
        return float(gain)
    return None


def _run_recipe(checkpoint: Path) -> dict | None:
    """`<run>/config.yaml` (the resolved config train.py writes) of `<run>/checkpoints/x.ckpt`."""
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        recipe = yaml.safe_load(config.read_text(encoding="utf-8"))  # plain data only, no tags
    except (OSError, yaml.YAMLError):
        return None
    return recipe if isinstance(recipe, dict) else None


def _recipe_corpus(recipe: dict | None) -> Path | None:
    root = ((recipe or {}).get("data") or {}).get("root")
    return Path(root) if isinstance(root, str) else None


def _corpus_task(corpus: Path | None) -> dict | None:
    from s2s.data.corpus import CorpusError, read_record

    if corpus is None:
        return None
    try:
        record = read_record(corpus)
    except CorpusError:
        return None
    task = ((record or {}).get("recipe") or {}).get("task")
    return task if isinstance(task, dict) else None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    corpus: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a training checkpoint into an artifact: its run's recipe, its corpus's task (or `corpus`'s),
    and a stream_eval metrics.json (`metrics`) for the model card. A training run directory means the
    checkpoint the run chose (`run_checkpoint`), as everywhere a model is asked for."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and (checkpoint / "checkpoints").is_dir():
        checkpoint = run_checkpoint(checkpoint)
    if not checkpoint.is_file():
        what = "is a folder without checkpoints/" if checkpoint.is_dir() else "does not exist"
        raise PretrainedError(
            f"checkpoint {checkpoint} {what}; a run keeps its checkpoints in "
            "outputs/train/<run_name>/checkpoints/ (last.ckpt, best-*.ckpt); pass one, or the run directory"
        )
    if corpus is not None and not (Path(corpus) / "corpus.json").is_file():
        raise PretrainedError(f"corpus {corpus} holds no corpus.json; pass the folder the model trained on")
    model, provenance = _read_checkpoint(checkpoint, None if corpus is None else Path(corpus))
    figures = None
    if metrics is not None:
        if not Path(metrics).is_file():
            raise PretrainedError(
                f"metrics {metrics} does not exist; pass the metrics.json that scripts/stream_eval.py wrote"
            )
        figures = _read_json(Path(metrics))
    return save_pretrained(
        model, out, task=provenance.task, vocabularies=provenance.vocabularies, recipe=provenance.recipe,
        metrics=figures, training=provenance.training, overwrite=overwrite,
    )  # fmt: skip


USAGE = (
    "usage: python -m s2s.pretrained export checkpoint=RUN_DIR|CKPT out=DIR "
    "[corpus=DATA_DIR] [metrics=EVAL/metrics.json] [overwrite=false]"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parsers = {"checkpoint": str, "out": str, "corpus": optional(str), "metrics": optional(str),
                   "overwrite": boolean}  # fmt: skip
        positional, options = parse_options(argv, parsers, USAGE)
        if positional != ["export"]:
            raise OptionError(f"expected the command `export`, got {positional}\n{USAGE}")
        for key in ("checkpoint", "out"):
            if key not in options:
                raise OptionError(f"{key}= is required\n{USAGE}")
        out = export_checkpoint(
            options["checkpoint"], options["out"], corpus=options.get("corpus"),
            metrics=options.get("metrics"), overwrite=options.get("overwrite", False),
        )  # fmt: skip
    except (OptionError, PretrainedError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
