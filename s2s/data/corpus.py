"""The synthetic corpus on disk: plan the splits, synthesize what is missing on all cores, record it.

`<out_dir>/corpus.json` records the recipe (everything that determines the audio) and whether the
corpus is complete. Re-running with the same recipe resumes an interrupted run (finished dialogues
are kept: each is written wav first, manifest last, both atomically) or changes only the amount
of data (a split's dialogues are a prefix-stable sequence). A different recipe in the same folder,
or a folder that holds other audio, is refused rather than overwritten. A synthesis worker that
dies (the out-of-memory killer, a SIGKILL) fails the run at once, naming the dialogue it was making.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s.data.audio import save_audio
from s2s.data.manifest import SYSTEM, USER
from s2s.data.synth import SPLITS, CorpusConfig, DialogueJob, DialogueSynthesizer, plan_split
from s2s.data.tasks import DialogueTask

RECORD_NAME = "corpus.json"
RECORD_FORMAT = "s2s-corpus/1"
# Bump when a code change alters the audio or the manifests for the same recipe. 3: manifests carry
# word times (format "s2s-dialogue/2"); the audio is byte-identical to version 2's.
GENERATOR_VERSION = 3
_DIALOGUE_FILE = re.compile(r"^(train|val|test)_\d{5}\.(wav|json)(\.partial)?$")
_ELSEWHERE = "use another folder (train.py: data.root=..., make_data.py: corpus.out_dir=...)"


class CorpusError(RuntimeError):
    """The output folder cannot take this corpus; the message says why and what to do."""


@dataclass(frozen=True)
class CorpusSummary:
    out_dir: Path
    dialogues: dict[str, int]
    seconds: dict[str, float]
    synthesized: int  # dialogues made by this call (0 when the corpus was already complete)
    elapsed: float

    def describe(self) -> str:
        splits = ", ".join(
            f"{s} {self.dialogues[s]} dialogues / {self.seconds[s] / 3600:.2f} h" for s in self.dialogues
        )
        return f"corpus in {self.out_dir}: {splits}; synthesized {self.synthesized} in {self.elapsed:.1f} s"


def generate_corpus(
    config: CorpusConfig,
    task: DialogueTask,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusSummary:
    """Make sure `config.out_dir` holds the corpus `config` + `task` describe; synthesize what is missing."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    recipe = corpus_recipe(config, task)
    _claim_folder(out_dir, recipe, overwrite)

    plans = {split: plan_split(config, split) for split in SPLITS}
    try:
        _write_record(out_dir, recipe, config, plans, complete=False)
    except OSError as error:
        raise CorpusError(
            f"cannot write the corpus into {out_dir}: {error.strerror or error} ({error.filename}); "
            f"{_ELSEWHERE} that you can write to, or make this one writable"
        ) from error
    for split, jobs in plans.items():
        _remove_beyond_plan(out_dir / split, split, len(jobs))
    missing = [job for jobs in plans.values() for job in jobs if not _is_done(out_dir, job)]
    synthesize_jobs(config, task, missing, workers=workers, progress=progress)
    _write_record(out_dir, recipe, config, plans, complete=True)
    return CorpusSummary(
        out_dir=out_dir,
        dialogues={split: len(jobs) for split, jobs in plans.items()},
        seconds={split: sum(job.seconds for job in jobs) for split, jobs in plans.items()},
        synthesized=len(missing),
        elapsed=time.perf_counter() - started,
    )


def corpus_recipe(config: CorpusConfig, task: DialogueTask) -> dict:
    """Everything that determines the audio: a folder holds the corpus of one recipe."""
    return {
        "generator": GENERATOR_VERSION,
        "config": _without_hours(config.record()),
        "task": task.describe(),
    }


def recipe_differences(stored: object, wanted: object, path: str = "", limit: int = 8) -> list[str]:
    """The dotted paths (at most `limit`) where two corpus recipes differ: what a message names so a
    researcher sees which setting (`config.split_timing`, `generator`) made a folder's corpus another."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found = []
        for key in sorted(set(stored) | set(wanted)):
            found += recipe_differences(
                stored.get(key), wanted.get(key), f"{path}.{key}" if path else key, limit
            )
            if len(found) >= limit:
                return found[:limit]
        return found
    return [] if stored == wanted else [path or "(the whole recipe)"]


def check_task(out_dir: str | os.PathLike, task: DialogueTask) -> None:
    """Raise CorpusError when `out_dir` holds the corpus of another task (reads only, writes nothing)."""
    record = read_record(out_dir)
    stored = ((record or {}).get("recipe") or {}).get("task")
    if stored is not None and stored != task.describe():
        name = stored.get("name", "?") if isinstance(stored, dict) else "?"
        raise CorpusError(
            f"{out_dir} holds the corpus of task {name!r}, but this run asks for task {task.name!r}; point "
            f"data.root at another folder for it (it is synthesized there when empty), e.g. "
            f"data.root=data/{task.name}, or drop task= to train on what {out_dir} holds"
        )


def read_record(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorpusError(
            f"{path} is not valid JSON ({error}); delete it to re-generate the corpus"
        ) from error
    if not isinstance(record, dict):
        raise CorpusError(
            f"{path} holds a JSON {type(record).__name__}, not an s2s corpus record (an object with "
            f'"format": "{RECORD_FORMAT}"); delete it to re-generate the corpus there, or {_ELSEWHERE}'
        )
    if record.get("format") != RECORD_FORMAT:
        raise CorpusError(f"{path} is not an s2s corpus record (format {record.get('format')!r})")
    return record


def _claim_folder(out_dir: Path, recipe: dict, overwrite: bool) -> None:
    record = read_record(out_dir)
    if record is None:
        foreign = (
            [p for p in out_dir.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".json")]
            if out_dir.exists()
            else []
        )
        if foreign:
            raise CorpusError(
                f"{out_dir} already holds {len(foreign)} audio/json file(s) (e.g. {foreign[0]}) "
                "that are not an s2s synthetic corpus; choose an empty out_dir so nothing there "
                "is overwritten"
            )
        return
    if record.get("recipe") == recipe:
        return
    if not overwrite:
        raise CorpusError(_other_recipe(out_dir, record, recipe))
    for split in SPLITS:
        _remove_beyond_plan(out_dir / split, split, 0)


def _other_recipe(out_dir: Path, record: dict, recipe: dict) -> str:
    stored = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
    changed = sorted(key for key in set(stored) | set(recipe) if stored.get(key) != recipe.get(key))
    tasks = ""
    if "task" in changed:
        names = [(r.get("task") or {}).get("name", "?") if isinstance(r.get("task"), dict) else "?"
                 for r in (stored, recipe)]  # fmt: skip
        tasks = f"; its task is {names[0]!r}, this run's is {names[1]!r}"
    if "generator" in changed:
        tasks += (
            f"; it was made by generator version {stored.get('generator')!r}, this code makes version "
            f"{recipe.get('generator')!r} (see GENERATOR_VERSION in s2s/data/corpus.py)"
        )
    return (
        f"{out_dir} holds a corpus made with other settings (differences in: {', '.join(changed)}){tasks}; "
        f"{_ELSEWHERE}, or overwrite=true (make_data.py) to replace that corpus"
    )


def _remove_beyond_plan(folder: Path, split: str, count: int) -> None:
    """Delete this corpus's own dialogue files numbered >= count (never anything else)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _DIALOGUE_FILE.match(path.name)
        if (
            match
            and match.group(1) == split
            and (int(path.name[len(split) + 1 : len(split) + 6]) >= count or match.group(3))
        ):
            path.unlink()


def _is_done(out_dir: Path, job: DialogueJob) -> bool:
    folder = out_dir / job.split
    return (folder / f"{job.dialogue_id}.json").is_file() and (folder / f"{job.dialogue_id}.wav").is_file()


def _write_record(out_dir: Path, recipe: dict, config: CorpusConfig, plans: dict, complete: bool) -> None:
    record = {
        "format": RECORD_FORMAT,
        "complete": complete,
        "channels": [USER, SYSTEM],  # the synthesizer writes the user on channel 0 (data/channels.py)
        "recipe": recipe,
        "hours": config.hours,
        "splits": {
            split: {"dialogues": len(jobs), "hours": round(sum(j.seconds for j in jobs) / 3600, 4)}
            for split, jobs in plans.items()
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (RECORD_NAME + ".partial")
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, out_dir / RECORD_NAME)


def _without_hours(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "hours"}


# --- many dialogues on all cores -------------------------------------------------------------

_worker: DialogueSynthesizer | None = None


def _start_worker(config: CorpusConfig, task: DialogueTask) -> None:
    global _worker
    torch.set_num_threads(1)  # one dialogue per core
    _worker = DialogueSynthesizer(config, task)


def _run_job(job: DialogueJob) -> float:
    assert _worker is not None, "worker process was not initialized"
    return write_dialogue(_worker, job)


def write_dialogue(synthesizer: DialogueSynthesizer, job: DialogueJob) -> float:
    """Make one dialogue; write `<split>/<id>.wav`, then `<split>/<id>.json` (which marks it done)."""
    tracks, manifest = synthesizer.make(job)
    folder = Path(synthesizer.config.out_dir) / job.split
    save_audio(folder / f"{job.dialogue_id}.wav", tracks, synthesizer.rate)
    manifest.save(folder / f"{job.dialogue_id}.json")
    return manifest.duration


def synthesize_jobs(
    config: CorpusConfig,
    task: DialogueTask,
    jobs: list[DialogueJob],
    workers: int | None = None,
    progress: bool = True,
) -> float:
    """Write `jobs` on `workers` processes (default: all cores); returns the seconds of audio written."""
    if not jobs:
        return 0.0
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    jobs = sorted(jobs, key=lambda job: -job.seconds)  # longest first balances the cores
    from tqdm.auto import tqdm

    hours = sum(job.seconds for job in jobs) / 3600
    bar = tqdm(total=len(jobs), unit="dialogue", desc=f"synthesizing {hours:.2f} h", disable=not progress)
    try:
        if workers == 1:
            written = 0.0
            synthesizer = DialogueSynthesizer(config, task)
            for job in jobs:
                written += write_dialogue(synthesizer, job)
                bar.update(1)
        else:
            written = _synthesize_on_processes(config, task, jobs, workers, bar.update)
    finally:
        bar.close()
    return written


def _synthesize_on_processes(config: CorpusConfig, task: DialogueTask, jobs: list[DialogueJob], workers: int,
                             done_one) -> float:  # fmt: skip
    """One dialogue per worker at a time, so that a dead worker's dialogue is known.

    concurrent.futures notices a worker that died (multiprocessing.Pool waits for it forever) and
    fails every running job with BrokenProcessPool.
    """
    context = multiprocessing.get_context("fork")  # each phrase forks again; fork is the cheap start
    waiting = list(reversed(jobs))  # pop() takes the longest first: it balances the cores
    running: dict[Future, DialogueJob] = {}
    written = 0.0
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(config, task)
    )
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                job = waiting.pop()
                running[pool.submit(_run_job, job)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                written += future.result()
                del running[future]
                done_one(1)
    except BrokenProcessPool as error:
        making = sorted(job.dialogue_id for job in running.values())
        which = making[0] if len(making) == 1 else "one of " + ", ".join(making)
        raise CorpusError(
            f"a synthesis worker died while making {which} in {config.out_dir} (killed from outside, e.g. by "
            "the out-of-memory killer). Finished dialogues are kept: re-run the same command to resume "
            "(if memory ran out, make_data.py workers=<fewer> uses less)"
        ) from error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written
