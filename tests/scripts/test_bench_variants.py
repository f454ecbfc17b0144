"""scripts/bench_variants.py: variants run in interleaved rounds, each with its own ``s2s`` first on
the path, and the table reports each one's median and its ratio to the first (a fake benchmark
stands in for the GPU ones)."""

import random
import subprocess

import pytest

FAKE_BENCH = """
import argparse, json, os, pathlib, s2s
parser = argparse.ArgumentParser()
parser.add_argument("--scale", type=float)
parser.add_argument("--json", type=pathlib.Path)
args = parser.parse_args()
with open(os.environ["ORDER_LOG"], "a") as log:
    log.write(s2s.LABEL + "\\n")
rows = [
    {"backend": "cute", "seqlen": 1024, "tflops": s2s.VALUE * args.scale, "ms": 1.5},
    {"backend": "cute", "seqlen": 4096, "tflops": 2 * s2s.VALUE * args.scale, "bwd_tflops": 7.0},
    {"backend": "flex", "seqlen": 1024, "error": "wrong result"},
]
args.json.write_text(json.dumps({"rows": rows}))
"""


def make_tree(root, label: str, value: float):
    (root / "s2s").mkdir(parents=True)
    (root / "s2s" / "__init__.py").write_text(f"LABEL = {label!r}\nVALUE = {value}\n")
    (root / "scripts").mkdir()
    (root / "scripts" / "fake_bench.py").write_text(FAKE_BENCH)
    return root


@pytest.fixture(scope="module")
def variants(load_script):
    return load_script("bench_variants")


def test_rounds_interleave_and_the_table_gives_medians_and_ratios(variants, tmp_path, monkeypatch, capsys):
    seed = random.randrange(10**6)
    value_a, value_b = random.Random(seed).uniform(100, 500), random.Random(seed + 1).uniform(100, 500)
    tree_a = make_tree(tmp_path / "a", "a", value_a)
    tree_b = make_tree(tmp_path / "b", "b", value_b)
    order_log = tmp_path / "order.log"
    monkeypatch.setenv("ORDER_LOG", str(order_log))
    monkeypatch.chdir(tmp_path)
    bench = ["--", "scripts/fake_bench.py", "--scale", "1.0"]
    variants.main(["--variant", str(tree_a), "--variant", str(tree_b), "--rounds", "3", *bench])
    assert order_log.read_text().split() == ["a", "b"] * 3, f"seed {seed}"
    table = capsys.readouterr().out.split("3 interleaved rounds of:")[1]
    lines = [line for line in table.splitlines() if line.startswith("| backend=")]
    # two metrics of the 4096 row, one of the 1024 row; the failed flex row has none
    assert len(lines) == 3, (seed, table)
    row_1024 = next(line for line in lines if "seqlen=1024" in line and "| tflops |" in line)
    assert f"{value_a:.1f} [" in row_1024 and f"{value_b:.1f} [" in row_1024, (seed, row_1024)
    assert row_1024.rstrip(" |").endswith(f"{value_b / value_a:.3f}"), (seed, row_1024)
    row_bwd = next(line for line in lines if "| bwd_tflops |" in line)
    assert row_bwd.rstrip(" |").endswith("1.000"), (seed, row_bwd)
    assert "ms" not in [cell.strip() for cell in table.split("|")], "only *tflops fields by default"


def test_a_git_revision_is_exported_with_its_own_package(variants, tmp_path):
    repo = tmp_path / "repo"
    make_tree(repo, "old", 1.0)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "old"], check=True)
    (repo / "s2s" / "__init__.py").write_text("LABEL = 'new'\nVALUE = 2.0\n")
    subprocess.run([*git, "commit", "-qam", "new"], check=True)
    workdir = tmp_path / "trees"
    workdir.mkdir()
    old = variants.materialize("HEAD~1", workdir, repo=repo)
    assert (old.root / "s2s" / "__init__.py").read_text().startswith("LABEL = 'old'")
    assert (old.root / "scripts" / "fake_bench.py").exists()
    with pytest.raises(SystemExit, match=r"neither '\.', a folder nor a git revision"):
        variants.materialize("no-such-revision", workdir, repo=repo)


def test_a_failing_benchmark_names_the_variant(variants, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "a", "a", 1.0)
    (tree / "scripts" / "fake_bench.py").write_text("raise SystemExit('boom')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)a: .*failed.*boom"):
        variants.main(["--variant", str(tree), "--rounds", "1", "--", "scripts/fake_bench.py"])


def test_a_run_past_its_timeout_or_without_rows_is_an_error(variants, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "a", "a", 1.0)
    monkeypatch.chdir(tmp_path)
    (tree / "scripts" / "fake_bench.py").write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(RuntimeError, match=r"a: .* ran past 1 s"):
        variants.main(["--variant", str(tree), "--timeout", "1", "--", "scripts/fake_bench.py"])
    (tree / "scripts" / "fake_bench.py").write_text("print('no json written')\n")
    with pytest.raises(RuntimeError, match="wrote no rows to --json"):
        variants.main(["--variant", str(tree), "--", "scripts/fake_bench.py"])
