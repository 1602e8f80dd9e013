"""Command-line plumbing shared by every script and ``python -m keras_caltech`` command.

A user's mistake (a bad flag, a missing file, an impossible option) ends as one line
starting ``error:`` on stderr and exit code 2, never a traceback; anything else is a bug
and keeps its traceback.
"""

import argparse
import importlib
import os
import re
import sys
import tempfile

from keras_caltech.errors import TrainingInterrupted, UserError


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose parse errors are UserErrors: one ``error:`` line, not usage text."""

    def error(self, message):
        raise UserError(message)


def run_command(command, argv=None):
    """Runs ``command(argv) -> exit code`` and maps how it ends to an exit code.

    Returns:
        The command's own code; 2 after printing ``error: ...`` for a UserError; 130 on
        Ctrl-C (with how to resume, when training was stopped); 0 for ``--help``.
    """
    try:
        return command(list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"stopped: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_request:  # argparse's --help
        return exit_request.code if isinstance(exit_request.code, int) else 0


# absl's prefix on a C++ log line: severity letter, MMDD, time (00:00:SECONDS before
# absl::InitializeLog()), thread id, file:line].
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def is_startup_chatter(line, level):
    """Whether ``line`` is a C++ log line that TF_CPP_MIN_LOG_LEVEL ``level`` means to hide.

    Level 1 hides INFO lines, 2 also WARNING, 3 also ERROR (TensorFlow's scale); FATAL stays.
    """
    if line.startswith(_ABSL_BANNER):
        return level >= 1
    match = _ABSL_LINE.match(line)
    return bool(match) and "IWE".find(match.group(1)) in range(level)


def import_tensorflow_quietly():
    """Imports TensorFlow without the C++ log lines its import prints despite TF_CPP_MIN_LOG_LEVEL.

    Workaround: in TensorFlow 2.21 (our pin), lines logged before absl::InitializeLog()
    reach stderr whatever the threshold (abseil/abseil-cpp#1718, #1957; tensorflow/tensorflow
    #102212), so a user's one ``error:`` line came after four lines of start-up chatter.
    The level defaults to 3 (hide all but FATAL); TF_CPP_MIN_LOG_LEVEL=0 shows every line.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = 0
    import_quietly("tensorflow", level)


def import_quietly(module_name, level):
    """Imports ``module_name`` with stderr's file descriptor pointed at a temporary file.

    Afterwards, also when the import fails, everything it wrote is passed on to stderr
    except the C++ log lines that ``level`` hides (see is_startup_chatter). Not when the
    import kills the process (a FATAL log line is followed by an abort): what it wrote is
    lost with it, and ``TF_CPP_MIN_LOG_LEVEL=0``, which skips the redirect, shows it.
    """
    try:
        saved = None if module_name in sys.modules or level <= 0 else os.dup(2)
    except OSError:  # no stderr to redirect (a closed descriptor 2)
        saved = None
    if saved is None:
        importlib.import_module(module_name)
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module(module_name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_startup_chatter(line, level)))
            sys.stderr.flush()
