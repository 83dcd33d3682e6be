"""Errors a user can act on: scripts print their message alone and exit non-zero."""


class LsdcError(Exception):
    """Bad input or configuration; the message names the file, study or key at fault."""


class ConfigError(LsdcError):
    """An unknown config key or a value of the wrong type."""


class DataError(LsdcError):
    """A data file is missing, malformed or inconsistent."""


class TrainingDiverged(LsdcError):
    """A training run whose loss or predictions stopped being finite numbers."""


class NonFiniteOutput(LsdcError):
    """A trained model gave a NaN or infinite output at prediction time: its weights are broken, which no
    other model or the prior may quietly stand in for."""
