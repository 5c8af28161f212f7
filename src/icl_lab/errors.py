"""Error types for icl-lab. Every user-facing failure is an `IclLabError` whose message is one
line naming the problem and the fix; the CLI prints it and exits 1, so a traceback means a bug."""


class IclLabError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(IclLabError):
    """A config value is missing, malformed or inconsistent."""


class CheckpointError(IclLabError):
    """A run directory or checkpoint is missing, truncated or from an incompatible run."""


class DataError(IclLabError):
    """Training or evaluation data cannot be produced as asked."""


class NonFiniteError(IclLabError):
    """A loss or activation became NaN or inf."""


class CorruptFileError(CheckpointError):
    """A file of a run is damaged: truncated, unparseable, or failing its content hash."""


class RunInUseError(IclLabError):
    """Another trainer holds the run directory's lock."""


class StorageError(IclLabError):
    """A file could not be written: the disk is full, read-only or failing."""


class IclLabWarning(UserWarning):
    """Something went wrong and was handled (a torn log line dropped, a corrupt checkpoint skipped);
    the CLI prints it as one line."""


class ResourceError(IclLabError):
    """The work would not fit the machine (memory), as estimated before it starts."""
