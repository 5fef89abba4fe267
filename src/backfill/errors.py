"""The one error hierarchy of backfill.

Every error the library raises on purpose is a ``BackfillError``; ``cli.main`` maps each class
below to one exit code, so adding a class here means adding its line there::

    BackfillError                anything we raise on purpose (exit 1 unless below)
    ├── ConfigError              bad job file, option, input or seed file; nothing written (exit 2)
    │   ├── InvalidIdentifierError  a value its identifier's normalization rejects
    │   ├── SchemaMismatch       the store lacks trait groups/traits the job writes (exit 2)
    │   └── CredentialsMissing   no credentials in the environment (exit 2)
    ├── SchemaError              a trait-group read or change failed or never completed (exit 1)
    ├── RunLocked                another process is running this job (exit 2)
    ├── AuthError                credentials refused (401/403): stop at once (exit 3)
    ├── StorageError             a file of ours (checkpoint, state, report) is unusable (exit 1)
    └── EmulatorError            the local emulator could not start or serve (exit 1)

Third-party errors (httpx, sqlite3, polars, uvicorn, OSError) are translated at the edge of the
module that calls them, with ``raise ... from exc``, naming the path, so callers only ever catch
these. Anything else that reaches ``cli.main`` is a bug: one line, exit 1, ``--debug`` for the
traceback.
"""


class BackfillError(Exception):
    """Root of every error backfill raises on purpose."""


class ConfigError(BackfillError):
    """Input that cannot be used as given; the message names the key or file and what is wrong."""


class InvalidIdentifierError(ConfigError, ValueError):
    """An identifier value that its normalization rejects (e.g. a phone number with 7 digits)."""


class SchemaMismatch(ConfigError):
    """The store lacks a trait group or trait the job writes, or types one differently; raised
    before the first row, since the API would refuse every row (``.diff``: what differs)."""

    def __init__(self, message: str, diff: str) -> None:
        super().__init__(message)
        self.diff = diff


class CredentialsMissing(ConfigError):
    """The environment holds no (or half a) credential pair: fixed by the user, not the service."""


class SchemaError(BackfillError):
    """A trait-group read or write failed after retries, its Operation failed, or the group kept
    changing under us (412 every time)."""


class RunLocked(BackfillError):
    """Another backfill process holds this job's output folder (say, last night's cron run)."""


class AuthError(BackfillError):
    """Credentials refused by the service (401/403); retrying cannot help. Missing ones are
    ``CredentialsMissing``."""


class StorageError(BackfillError):
    """A file the tool keeps (checkpoint, incremental state, reports) cannot be read or written:
    disk full, read-only, removed underneath us. The message names the path."""


class EmulatorError(BackfillError):
    """The emulator failed to start (port taken, unreadable state file)."""


def reported(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a task group's failure: an AuthError first (the run stopped
    because of it), else the first BackfillError, else the group itself. Concurrent workers
    fail as an ExceptionGroup; callers of the library should see our errors, not the group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in (AuthError, StorageError, BackfillError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group
