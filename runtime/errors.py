"""The exception tree of agentrt.

Every error the library raises derives from :class:`AgentRuntimeError`; each leaf also
derives from the builtin it most resembles, so callers may catch either::

    AgentRuntimeError
    ├── ConfigError (ValueError)            bad task file, bad argument: exit 2, nothing started
    │   ├── ImageNotFoundError (LookupError)
    │   └── AdmissionError                   the run cannot fit in the engine
    ├── EngineError (RuntimeError)          Docker engine unreachable or an API call failed
    │   ├── EngineUnreachableError (ConnectionError)  no answer: socket, connection, time-out
    │   ├── EngineRefusedError               it answered with an error (status code + message)
    │   └── EngineNotFoundError (LookupError) it has no such object (container, image...)
    ├── GitError (RuntimeError)             a git command failed
    │   └── BundleRefusedError               a session's bundle failed fsck, size or secrets
    ├── WorkspaceError (OSError)            a session's working tree could not be made or removed
    ├── VolumeError (OSError)               a disk-limited volume could not be made or removed
    ├── DatabaseError (RuntimeError)        a session database could not be made or dropped
    ├── SessionError (RuntimeError)         a session could not start or be supervised
    │   ├── HarvestError                     its work could not be read out (volume kept)
    │   └── SessionTimeoutError (TimeoutError)
    ├── WaitTimeoutError (TimeoutError)     something agentrt waited for did not happen in time
    ├── MergeError (RuntimeError)           a merge could not be checked or performed
    ├── StateError (RuntimeError)           the state database is unreadable or too new
    │   └── StateDamagedError                corrupt, or empty where agentrt has worked: repair
    └── NotFoundError (LookupError)         no run or session matches a name
"""

from __future__ import annotations


class AgentRuntimeError(Exception):
    """Root of every error raised by agentrt."""


class ConfigError(AgentRuntimeError, ValueError):
    """User input (task file, CLI argument, repository path) is invalid; nothing was started."""


class ImageNotFoundError(ConfigError, LookupError):
    """An image a task needs does not exist on the engine."""


class AdmissionError(ConfigError):
    """The run's concurrent quota sum does not fit in what the engine offers."""


class EngineError(AgentRuntimeError, RuntimeError):
    """The Docker engine could not be reached or refused a request."""


class EngineUnreachableError(EngineError, ConnectionError):
    """The engine did not answer: no socket, connection refused or reset, a read time-out."""


class EngineRefusedError(EngineError):
    """The engine answered a request with an error; ``status_code`` is its HTTP status (None
    when it gave none) and the message carries the engine's own words."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class EngineNotFoundError(EngineError, LookupError):
    """The engine has no such object (container, image, volume, network, node)."""


class GitError(AgentRuntimeError, RuntimeError):
    """A git command failed; ``stderr`` holds git's own words."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message if not stderr else f"{message}: {stderr.strip()}")
        self.stderr = stderr


class BundleRefusedError(GitError):
    """A session's bundle was refused on import (fsck, size or secret policy); nothing moved."""


class WorkspaceError(AgentRuntimeError, OSError):
    """A session's working tree could not be created, snapshotted or removed."""


class VolumeError(AgentRuntimeError, OSError):
    """A disk-limited volume could not be created, mounted or removed."""


class DatabaseError(AgentRuntimeError, RuntimeError):
    """A session's private database could not be created or dropped."""


class SessionError(AgentRuntimeError, RuntimeError):
    """A session could not be started or supervised."""


class HarvestError(SessionError):
    """A session's work could not be read out of its volume; the volume is kept."""


class SessionTimeoutError(SessionError, TimeoutError):
    """A session ran past its wall-time limit."""


class WaitTimeoutError(AgentRuntimeError, TimeoutError):
    """Something agentrt waited for (a service, a proxy, a Swarm task) did not happen in time."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for {what}")
        self.what = what
        self.timeout = timeout


class MergeError(AgentRuntimeError, RuntimeError):
    """A merge could not be checked or performed; nothing was changed."""


class StateError(AgentRuntimeError, RuntimeError):
    """The state database cannot be used (corrupt, or written by a newer agentrt)."""


class StateDamagedError(StateError):
    """The state database is corrupt, or empty although agentrt's branches, session
    directories or logs exist; ``agentrt gc --repair-state`` moves it aside and rebuilds it."""


class NotFoundError(AgentRuntimeError, LookupError):
    """No run or session matches the given name (or the prefix is ambiguous)."""


class HarvestTooLargeError(HarvestError):
    """A session's work, bundled, is over the import limit: refused (not retried)."""
