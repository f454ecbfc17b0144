"""csv/metrics.csv across launches: appended to, rows beyond the resumed checkpoint set aside, none lost."""

import csv

from s2s.training.csv_metrics import RunCSVLogger


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _log(logger, step, **values):
    logger.log_metrics(values, step=step)


def test_a_new_launch_appends_and_a_new_column_keeps_every_row(tmp_path):
    first = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(3):
        _log(first, step, **{"train/loss": 1.0 / (step + 1)})
    first.save()
    second = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")  # keep_rows=None: keep all
    _log(second, 3, **{"train/loss": 0.2})
    _log(second, 3, **{"val/loss": 0.3})  # a column the file has not seen: the file is rewritten
    second.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "3"]
    assert rows[0]["train/loss"] == "1.0" and rows[4]["val/loss"] == "0.3" and rows[0]["val/loss"] == ""
    assert second.experiment.rows_on_disk == 5


def test_resume_keeps_the_checkpoints_rows_and_moves_later_ones_aside(tmp_path):
    killed = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(5):
        _log(killed, step, **{"train/loss": float(step)})
    killed.save()  # steps 3 and 4 came after the checkpoint, which saw 3 rows
    resumed = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="", keep_rows=3)
    rows_aside, aside = resumed.experiment.moved_aside
    assert (
        rows_aside == 2 and aside.parent == tmp_path / "csv" and aside.name.startswith("metrics.abandoned-")
    )
    for step in range(3, 5):
        _log(resumed, step, **{"train/loss": 10.0 + step})
    resumed.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [(r["step"], r["train/loss"]) for r in rows] == [
        ("0", "0.0"), ("1", "1.0"), ("2", "2.0"), ("3", "13.0"), ("4", "14.0")
    ]  # fmt: skip
    assert [(r["step"], r["train/loss"]) for r in _rows(aside)] == [("3", "3.0"), ("4", "4.0")]


def test_a_fresh_start_moves_the_old_file_aside_instead_of_deleting_it(tmp_path):
    old = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    _log(old, 0, **{"val/loss": 2.0})
    old.save()
    fresh = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="", keep_rows=0)
    rows_aside, aside = fresh.experiment.moved_aside
    assert rows_aside == 1 and _rows(aside)[0]["val/loss"] == "2.0"
    assert _rows(tmp_path / "csv" / "metrics.csv") == []
