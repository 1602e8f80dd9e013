"""The one exception type that means "the user asked for something we cannot do".

Scripts catch it, print one line starting ``error:`` and exit with code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a path, an option, a config value, a dataset."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training after its run folder existed, so the run can be resumed.

    Attributes:
        run_dir: the run folder to pass to ``python train.py --resume``.
        command: the command that continues; default ``python train.py --resume RUN_DIR``.
    """

    def __init__(self, run_dir, command=None):
        self.run_dir = run_dir
        self.command = command or f"python train.py --resume {run_dir}"
        super().__init__(f"interrupted. Continue from the last completed epoch with: {self.command}")
