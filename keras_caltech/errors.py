"""The one exception type that means "the user asked for something we cannot do".

Scripts catch it, print one line starting ``error:`` and exit with code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a path, an option, a config value, a dataset."""
