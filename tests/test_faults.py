"""The faults a user meets: a diverged training, a second run on the same folder, a full or read-only disk,
the temporary files a killed write leaves. Each ends with one clear line and exit code 2."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsdc import cli, lock
from lsdc.io import TEMP_MARK, atomic_path

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_a_diverged_training_is_one_line_and_exit_2(smoke_run, tmp_path):
    proc = script("02_train.py", "--config", str(ROOT / "configs" / "smoke.yaml"), "--data-dir", str(smoke_run["data"]),
                  "--output-dir", str(smoke_run["out"]), "--set", "tag=diverge", "--set", "train.lr=1e12",
                  "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=3", "--set", "folds.train_folds=[0]")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: experiment attention_diverge fold 0 epoch 1: training diverged")
    assert "train.lr (now 1e+12)" in last and "Traceback" not in proc.stderr


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(smoke_run):
    with lock.hold(smoke_run["out"]):
        proc = script("04_ensemble.py", "--data-dir", str(smoke_run["data"]), "--output-dir", str(smoke_run["out"]))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert f"is in use by another run (pid {os.getpid()} on" in last and "--output-dir" in last
    # Released when the holder is done: the next holder gets it.
    with lock.hold(smoke_run["out"]):
        pass


def test_the_lock_leaves_no_stale_state_when_its_process_dies(tmp_path):
    """flock belongs to the open file: a holder killed outright frees the folder."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lsdc import lock\n"
                               f"with lock.hold({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.FolderInUse, match=f"pid {holder.pid} on"):
        with lock.hold(tmp_path):
            pass
    holder.kill()
    holder.wait(timeout=30)
    with lock.hold(tmp_path):
        pass


def test_holding_a_folder_removes_what_interrupted_writes_left(tmp_path):
    (tmp_path / "fold0").mkdir()
    left = tmp_path / "fold0" / f".last.pt{TEMP_MARK}k3j2h1g0.pt"
    left.write_bytes(b"")                                  # a kill while last.pt was written
    stamp = tmp_path / ".curves.png.made_from.json"        # other dot files are not temporaries
    stamp.write_text("{}")
    with lock.hold(tmp_path):
        assert not left.exists() and stamp.exists()
    with atomic_path(tmp_path / "x.csv") as tmp:
        assert TEMP_MARK in tmp.name


@pytest.mark.parametrize(("exc", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device", "outputs/oof.csv"),
     "error: the disk is full writing outputs/oof.csv (No space left on device)"),
    (OSError(errno.EROFS, "Read-only file system", "outputs/fold0/best.pt"),
     "error: the file system is read-only writing outputs/fold0/best.pt (Read-only file system)"),
    (PermissionError(errno.EACCES, "Permission denied", "submission/submission.csv"),
     "error: permission denied writing submission/submission.csv (Permission denied)"),
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"),
     "error: a checkpoint could not be written ([enforce fail at inline_container.cc:603] . unexpected pos 64"),
])
def test_a_refused_write_is_one_line_and_exit_2(exc, expected, capsys):
    def main(argv):
        raise exc

    with pytest.raises(SystemExit) as stop:
        cli.run(main, [])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected)


def test_other_errors_keep_their_traceback():
    def main(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        cli.run(main, [])
