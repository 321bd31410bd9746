"""Errors caused by the user's input. Each carries one line that names the file, key or flag;
the CLI prints it without a traceback and exits with status 2."""


class UserError(Exception):
    """Base class: bad input from the user (a file, a key, a flag)."""


class DataError(UserError):
    """A dataset file, manifest, image or MIMIC-CXR table that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete or not safe to load."""


class TrainingError(UserError):
    """A run that had to stop (for example, too many non-finite losses in a row)."""
