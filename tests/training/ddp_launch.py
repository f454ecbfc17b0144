"""scripts/train.py as the DDP tests launch it: Lightning re-runs this file for ranks 1.., and those
ranks record every file they create, write, rename or delete under the run directory (a Python audit
hook, set before anything else runs) in $S2S_WRITES_RECORD, so a test can prove they write nothing."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITING = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.link", "os.symlink"}


def _record_writes(run_dir: Path, record: str) -> None:
    run_dir = run_dir.resolve()
    out = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def under_run_dir(path) -> bool:
        if isinstance(path, int):
            return False
        path = os.fsdecode(path)
        return Path(os.path.abspath(path)).is_relative_to(run_dir)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (
                any(c in mode for c in "wax+")
                if isinstance(mode, str)
                else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            )
            touched = [path] if writes else []
        elif event == "os.mkdir":  # mkdir(exist_ok=True) of an existing folder creates nothing
            touched = [] if os.path.exists(args[0]) else [args[0]]
        elif event in WRITING:
            touched = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
        else:
            return
        for path in touched:
            if under_run_dir(path):
                os.write(out, f"{os.environ.get('LOCAL_RANK')} {event} {os.fsdecode(path)}\n".encode())

    sys.addaudithook(hook)


if __name__ == "__main__":
    if os.environ.get("LOCAL_RANK", "0") != "0":
        run_dir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.run.dir="))
        _record_writes(Path(run_dir.strip('"')), os.environ["S2S_WRITES_RECORD"])
    sys.path.insert(0, str(Path(__file__).parent))  # the tests' callbacks (batch_recorder)
    # train.py's code as this __main__ (runpy would set sys.argv[0] to train.py, and Lightning would
    # start ranks 1.. from train.py itself, without the hook); Hydra finds configs/ from its filename
    train = ROOT / "scripts" / "train.py"
    exec(compile(train.read_text(), str(train), "exec"), {"__name__": "__main__", "__file__": str(train)})
