"""The command-line plumbing: a user's mistake prints one ``error:`` line and nothing else.

TensorFlow 2.21's import writes C++ log lines to stderr whatever TF_CPP_MIN_LOG_LEVEL
says (abseil/abseil-cpp#1718); cli.import_tensorflow_quietly filters them. These tests
run the real scripts in fresh processes, where that import happens for real.
"""

import os
import subprocess
import sys

import pytest

from keras_caltech.cli import import_quietly, is_startup_chatter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = "I0000 00:00:1796110950.275632   11241 port.cc:153] oneDNN custom operations are on.\n"
WARNING = "W0000 00:00:1796110950.275632   11241 gpu.cc:12] slow\n"
ERROR = "E0000 00:00:1796110960.699270   11257 cuda_platform.cc:52] failed call to cuInit\n"
FATAL = "F1201 07:14:49.123456   11257 check.cc:1] Check failed\n"
OURS = ["error: dataset folder not found: /x\n", "scanning /x ...\n",
        "/usr/lib/python3/x.py:3: UserWarning: I0000 is a name\n"]


@pytest.mark.parametrize("level, hidden", [
    (0, []),
    (1, [BANNER, INFO]),
    (2, [BANNER, INFO, WARNING]),
    (3, [BANNER, INFO, WARNING, ERROR]),
])
def test_chatter_filter_follows_tensorflow_levels(level, hidden):
    lines = [BANNER, INFO, WARNING, ERROR, FATAL] + OURS
    assert [line for line in lines if is_startup_chatter(line, level)] == hidden


def _run(args, **env_changes):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_changes)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train.py", "--data", "/no/such/folder"], "error: dataset folder not found: /no/such/folder"),
    (["explain.py", "--image", "/no/such.jpg"], "error: give exactly one model"),
    (["-m", "keras_caltech", "evaluate", "/no/such/run"], "error: run folder not found: /no/such/run"),
])
def test_a_user_error_is_the_only_line_on_stderr(args, message):
    completed = _run(args)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [completed.stderr.strip()], completed.stderr
    assert completed.stderr.startswith(message)


def test_level_zero_still_shows_tensorflow_logs():
    # The lines are there to hide: if a TensorFlow release stops printing them, this
    # fails and the workaround can go.
    completed = _run(["train.py", "--data", "/no/such/folder"], TF_CPP_MIN_LOG_LEVEL="0")
    assert completed.returncode == 2
    assert any(is_startup_chatter(line, 3) for line in completed.stderr.splitlines(keepends=True))
    assert completed.stderr.splitlines()[-1] == "error: dataset folder not found: /no/such/folder"


def test_a_failing_import_still_reports_what_it_wrote(tmp_path, monkeypatch, capfd):
    (tmp_path / "noisy_module.py").write_text(
        "import os\n"
        f"os.write(2, {INFO.encode()!r} + b'kept: the reason it failed\\n')\n"
        "raise ImportError('broken build')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="broken build"):
        import_quietly("noisy_module", 3)
    assert capfd.readouterr().err == "kept: the reason it failed\n"


@pytest.mark.parametrize("command", ["evaluate", "ensemble", "export", "predict"])
def test_a_sub_command_answers_help_without_loading_tensorflow(command):
    completed = _run(["-c", "import sys; from keras_caltech.__main__ import main; "
                      f"code = main(['{command}', '--help']); print(code, 'tensorflow' in sys.modules)"])
    assert completed.stdout.strip().splitlines()[-1] == "0 False", completed.stdout + completed.stderr
