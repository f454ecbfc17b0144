"""The on-disk kernel cache key covers every source file of s2s/attention/cute/, found, not listed."""

import shutil
from pathlib import Path

import pytest

import s2s.attention.cute as cute_package
from s2s.attention.cute.kernel_cache import build_key, kernel_sources

pytest.importorskip("cutlass")  # the key names the installed CuTe DSL version

PACKAGE = Path(cute_package.__file__).parent


def test_every_python_file_of_the_package_is_a_source():
    found = {p.relative_to(PACKAGE).as_posix() for p in kernel_sources()}
    on_disk = {
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts
    }
    assert found == on_disk
    assert {
        "forward_sm90.py",
        "backward_prologue_sm90.py",
        "backward_dq_sm90.py",
        "backward_dkdv_sm90.py",
    } <= found


def test_editing_adding_or_renaming_any_source_changes_the_key(tmp_path):
    copy = tmp_path / "cute"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    specialization = "fwd_d64_c4"
    keys = {build_key(specialization, copy)}
    assert build_key(specialization, copy) in keys, "the key must not depend on anything but the inputs"
    for source in kernel_sources(copy):
        original = source.read_bytes()
        source.write_bytes(original + b"\n# an edit\n")
        key = build_key(specialization, copy)
        assert key not in keys, f"editing {source.name} left the cache key unchanged"
        keys.add(key)
        source.write_bytes(original)
        assert build_key(specialization, copy) == build_key(specialization, PACKAGE)
    (copy / "new_helper.py").write_text("X = 1\n")
    assert build_key(specialization, copy) not in keys, "a new module must change the key"
    (copy / "new_helper.py").rename(copy / "renamed_helper.py")
    renamed = build_key(specialization, copy)
    (copy / "renamed_helper.py").rename(copy / "new_helper.py")
    assert renamed != build_key(specialization, copy), "a rename must change the key"
    assert build_key("fwd_d128_c4", PACKAGE) != build_key(specialization, PACKAGE)
