"""One process at a time in a run folder: an OS lock that a second training meets as one error line."""

import os
import signal
import subprocess
import sys

import pytest

from galaxy_class.cli import main
from galaxy_class.errors import GalaxyClassError
from galaxy_class.runs import LOCK, locked
from galaxy_class.train import train

HOLD = """
import sys, time
from galaxy_class.runs import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the run folder tmp_path/run until the test ends (or kills it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_training_is_refused_naming_the_process_that_holds_the_folder(tmp_path, tiny_config, holder):
    with pytest.raises(GalaxyClassError, match=rf"run: in use by process {holder.pid} on \S+ since "):
        train(tiny_config, tmp_path / "run", verbose=0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK], "nothing written beside the lock"


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path, tiny_config, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert train(tiny_config, tmp_path / "run", verbose=0)["n"] > 0
    assert (tmp_path / "run" / LOCK).read_text() == "", "a released lock names no holder"


def test_the_command_line_reports_a_held_folder_in_one_line(capsys, tmp_path, holder):
    code = main(["train", "--model", "squeezenet", "--data", "sample", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'run'}: in use by process "
                                                                 f"{holder.pid}"), err


def test_a_folder_made_for_a_run_that_could_not_start_is_removed(tmp_path):
    with pytest.raises(RuntimeError), locked(tmp_path / "new" / "run"):
        raise RuntimeError
    assert not (tmp_path / "new" / "run").exists() and (tmp_path / "new").exists()


def test_a_folder_that_cannot_be_made_or_written_in_is_one_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GalaxyClassError, match="notes.txt/run: cannot write in it"), locked(tmp_path / "notes.txt" / "run"):
        pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_locking_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("mine")
    with pytest.raises(GalaxyClassError, match="exists and is not a folder"), locked(tmp_path / "run"):
        pass
    assert (tmp_path / "run").read_text() == "mine"
