"""Command-line plumbing shared by every script and ``python -m keras_caltech`` command.

A user's mistake (a bad flag, a missing file, an impossible option) ends as one line
starting ``error:`` on stderr and exit code 2, never a traceback; anything else is a bug
and keeps its traceback.
"""

import argparse
import sys

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
