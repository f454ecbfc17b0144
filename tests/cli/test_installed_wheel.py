"""`pip install` without a clone: the wheel built from this tree, installed into a fresh virtual
environment outside the repository, runs its commands from an empty directory (~1 min on 2 cores).

The new environment reuses this one's dependencies (torch, Lightning, ...) through a .pth line
after its own site-packages, so only s2s itself comes from the wheel, and nothing reaches the
network (no build isolation, no index)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("s2s", "configs", "pyproject.toml", "setup.py", "README.md")  # what the build reads
CONFIG_NAMES = {"s2s-train": "train", "s2s-eval": "stream_eval", "s2s-make-data": "make_data",
                "s2s-train-recognizer": "train_recognizer"}  # fmt: skip
COMMANDS = [  # each Hydra main, the first also with groups from the package's tree
    ("s2s-train", ("model=base", "logger=csv", "trainer=gpu", "experiment=bounded_history")),
    ("s2s-eval", ()), ("s2s-make-data", ("task=echo",)), ("s2s-train-recognizer", ()),
]  # fmt: skip


def _run(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a virtual environment with the s2s wheel installed (not editable)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves no build/ or egg-info in the repository
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    build = _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation",
                  "-q", "-w", tmp / "dist"], tmp)  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("s2s-*.whl")
    venv = tmp / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(site.stdout.strip(), "_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                    "-q", wheel], tmp)  # fmt: skip
    assert install.returncode == 0, install.stderr
    return venv / "bin"


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_with_its_configs(installed, tmp_path):
    probe = _run([installed / "python", "-c",
                  "import s2s, s2s.pretrained, s2s.infer; from s2s.config_dir import config_dir; "
                  "print(s2s.__file__); print(config_dir())"], tmp_path)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    package, configs = (Path(line) for line in probe.stdout.split())
    venv = installed.parent
    assert package.is_relative_to(venv) and configs == package.parent / "_configs", probe.stdout
    shipped = sorted(p.relative_to(configs) for p in configs.rglob("*.yaml"))
    repository = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    assert shipped == repository
    assert all((configs / p).read_bytes() == (ROOT / "configs" / p).read_bytes() for p in shipped)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "overrides"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_each_console_script_composes_what_a_clone_composes(installed, tmp_path, command, overrides):
    result = _run([installed / command, "--cfg", "job", *overrides], tmp_path)
    assert result.returncode == 0, result.stderr
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        expected = compose(config_name=CONFIG_NAMES[command], overrides=list(overrides))
    assert yaml.safe_load(result.stdout) == OmegaConf.to_container(expected)
    assert list(tmp_path.iterdir()) == [], "composing a config wrote files"


@pytest.mark.slow
def test_infer_script_is_installed(installed, tmp_path):
    result = _run([installed / "s2s-infer"], tmp_path)
    assert result.returncode == 1 and "usage: python -m s2s.infer" in result.stderr, result.stderr


@pytest.mark.slow
def test_serve_script_is_installed_with_its_page(installed, tmp_path):
    result = _run([installed / "s2s-serve", f"model={tmp_path / 'missing'}"], tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr, result.stderr
    listing = _run([installed / "python", "-c", "import importlib.resources as r; "
                    "print(' '.join(sorted(p.name for p in (r.files('s2s.serve') / 'static').iterdir())))"],
                   tmp_path)  # fmt: skip
    shipped = set(listing.stdout.split())
    expected = {p.name for p in (ROOT / "s2s" / "serve" / "static").iterdir() if p.is_file()}
    assert expected and shipped == expected, listing.stderr or f"wheel: {shipped}, tree: {expected}"
