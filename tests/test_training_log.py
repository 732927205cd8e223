"""Reading ESPnet's train.log: epochs, metrics, resumed runs and the wall-clock time; the summary and
the learning curve of a run (bin/plot_training)."""
import json
import os

import pytest

from mpq_plugins.bin import plot_training
from mpq_plugins.eval.training_log import read_epochs, run_logs, training_seconds

LOG = """\
[vm] 2026-11-22 05:41:20,600 (trainer:336) INFO: 1/40epoch started
[vm] 2026-11-22 05:42:47,643 (trainer:394) INFO: 1epoch results: [train] iter_time=0.002, loss_ctc=90.454, acc=0.094, loss=79.003, optim0_lr0=8.520e-04, train_time=0.386, time=1 minute and 21.02 seconds, total_count=210, [valid] loss_ctc=87.111, cer_ctc=0.931, acc=0.157, loss=70.761, time=6.02 seconds, total_count=23
[vm] 2026-11-22 05:42:49,649 (trainer:324) INFO: 2/40epoch started. Estimated time to finish: 57 minutes
[vm] 2026-11-22 05:44:10,000 (trainer:394) INFO: 2epoch results: [train] acc=0.165, loss=60.0, [valid] acc=0.175, loss=55.5
some other line
[vm] 2026-11-22 06:00:00,000 (trainer:324) INFO: 2/40epoch started. Estimated time to finish: 57 minutes
[vm] 2026-11-22 06:01:00,000 (trainer:394) INFO: 2epoch results: [train] acc=0.170, loss=59.0, [valid] acc=0.180, loss=54.0
"""


def test_read_epochs(tmp_path):
    p = tmp_path / "train.log"
    p.write_text(LOG)
    ep = read_epochs(str(p))
    assert [e["epoch"] for e in ep] == [1, 2]
    assert ep[0]["train"]["acc"] == 0.094 and ep[0]["valid"]["cer_ctc"] == 0.931
    assert ep[0]["train"]["optim0_lr0"] == 8.52e-4
    assert ep[1]["valid"]["acc"] == 0.180                       # the resumed epoch replaces the first try
    assert training_seconds(ep) == 87 + 60


def test_rotated_logs_are_read_in_order(tmp_path):
    first, second = LOG.split("some other line\n")
    (tmp_path / "train.log.1").write_text(first)
    (tmp_path / "train.log").write_text(second)
    ep = read_epochs(str(tmp_path / "train.log.1"), str(tmp_path / "train.log"))
    assert [e["epoch"] for e in ep] == [1, 2] and ep[1]["valid"]["acc"] == 0.180


def test_plot_training_reads_rotated_logs_and_writes_curve_and_summary(tmp_path, capsys):
    first, second = LOG.split("some other line\n")
    exp = tmp_path / "asr_x"
    exp.mkdir()
    (exp / "train.log.1").write_text(first)
    (exp / "train.log").write_text(second)
    (exp / "train.log.bak").write_text("not a rotated log\n")
    assert run_logs(str(exp)) == [str(exp / "train.log.1"), str(exp / "train.log")]
    plot_training.main(["--exp_dir", str(exp)])
    summary = json.loads((exp / "training_summary.json").read_text())
    assert summary == {"epochs": 2, "best_epoch": 2, "best_valid_acc": 0.180, "last_valid_acc": 0.180,
                       "train_seconds": 87 + 60}
    assert os.path.getsize(exp / "training_curve.png") > 1000
    assert "plot_training: " in capsys.readouterr().out
    (exp / "train.log").write_text("no epoch here\n")
    (exp / "train.log.1").unlink()
    with pytest.raises(SystemExit, match="train.log holds no finished epoch"):
        plot_training.main(["--exp_dir", str(exp)])
    with pytest.raises(SystemExit, match="nothing/train.log does not exist"):
        plot_training.main(["--exp_dir", str(tmp_path / "nothing")])
