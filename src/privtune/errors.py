"""User-facing errors: one line, naming the field or file at fault. The CLI turns them into exit code 2."""


class PrivtuneError(Exception):
    """A problem with the user's input (config, data file, model path, budget) or a run that must stop cleanly."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(PrivtuneError):
    """Bad config value; the message starts with the dotted field name."""


class DataError(PrivtuneError):
    """Bad data file; the message names the file."""


class BudgetError(PrivtuneError):
    """A privacy budget is spent, or would be overspent."""


class TrainingDiverged(PrivtuneError):
    """NaN/inf loss; the last good state is kept."""
