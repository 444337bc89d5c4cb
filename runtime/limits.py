"""The numbers a user writes: every bound, the strict integer types that enforce them, the
original design's size and duration strings, and the per-session quotas (``ResourceLimits``,
a task's ``LimitOverrides``). Importable from :mod:`runtime.config` as before."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.errors import ConfigError

# Upper bounds of every number a user writes (docs/operations.md, "Limits and their bounds").
# Beyond them a value is a typo, and the engine or the kernel would fail it only once the
# session starts (a pids limit past int64 is a Docker 500). Numbers are strict: "512", 512.0
# and true are refused rather than coerced.
MAX_MEMORY_MB = 1024 * 1024  # 1 TiB
MAX_CPU_PERCENT = 100 * 1024  # 1024 cores
MAX_TIME_SECONDS = 7 * 24 * 3600  # one week
MAX_DISK_MB = 16 * 1024 * 1024  # 16 TiB
MAX_PIDS = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT
MAX_CONCURRENT_AGENTS = 1024
MAX_RADAR_SECONDS = 3600
MAX_WARM_POOL = 64

MemoryMb = Annotated[int, Field(strict=True, gt=0, le=MAX_MEMORY_MB)]
CpuPercent = Annotated[int, Field(strict=True, gt=0, le=MAX_CPU_PERCENT)]
TimeSeconds = Annotated[int, Field(strict=True, gt=0, le=MAX_TIME_SECONDS)]
DiskMb = Annotated[int, Field(strict=True, gt=0, le=MAX_DISK_MB)]
Pids = Annotated[int, Field(strict=True, gt=0, le=MAX_PIDS)]
ConcurrentAgents = Annotated[int, Field(strict=True, gt=0, le=MAX_CONCURRENT_AGENTS)]
RadarSeconds = Annotated[int, Field(strict=True, ge=0, le=MAX_RADAR_SECONDS)]
WarmPool = Annotated[int, Field(strict=True, ge=0, le=MAX_WARM_POOL)]


def validation_message(exc: ValidationError, where: str) -> str:
    """One line for the first error of ``exc``: ``<where>: field <f>: <message>``."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown key (see docs/task-file.md for every key)"
    return f"{where}: field {field}: {message}"


class StrictModel(BaseModel):
    """A task-file model: unknown keys are refused, values never change after validation.

    Made by its constructor (``RunConfig(**settings)``), a bad value raises
    :class:`~runtime.errors.ConfigError` naming the model and the field, never pydantic's own
    ``ValidationError``; ``model_validate`` keeps pydantic's error (the task file loader turns
    it into one naming the file and the task).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, type(self).__name__)) from None

    # Marks this __init__ as pydantic's own, so validating a nested model from a dict (inside
    # a task file) does not go through it: the outer ValidationError keeps every location.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


# The original design's names for the limits (``max_memory="2GB"``...), accepted as aliases.
DESIGN_LIMIT_NAMES = {
    "memory_mb": "max_memory",
    "cpu_percent": "max_cpu_percent",
    "time_seconds": "max_execution_time",
    "disk_mb": "max_disk_usage",
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)
_SIZE_UNIT_MB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
_TIME_RE = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$", re.I)
_TIME_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, DESIGN_LIMIT_NAMES[name])


def size_to_mb(value: str, key: str) -> int:
    """``"2GB"``, ``"512m"``, ``"1.5GiB"`` → MiB (binary units, as Docker's ``--memory 2g``;
    a bare number is MiB); rounded up to a whole MiB."""
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(f"{key}: {value!r} is not a size: write MB as a number, or a string "
                         "such as \"512MB\" or \"2GB\"")
    return math.ceil(float(match[1]) * _SIZE_UNIT_MB[match[2].lower()])


def duration_to_seconds(value: str, key: str) -> int:
    """``"90"``, ``"90s"``, ``"30m"``, ``"2h"`` → seconds."""
    match = _TIME_RE.match(value)
    if match is None:
        raise ValueError(f"{key}: {value!r} is not a duration: write seconds as a number, or a "
                         "string such as \"90s\", \"30m\" or \"2h\"")
    return int(match[1]) * _TIME_UNIT_S[match[2].lower()]


def _design_value(alias: str, value: Any) -> Any:
    """A value given under a design name, as the strict field takes it (strings converted)."""
    if isinstance(value, str) and alias in ("max_memory", "max_disk_usage"):
        return size_to_mb(value, alias)
    if isinstance(value, str) and alias == "max_execution_time":
        return duration_to_seconds(value, alias)
    return value


def _design_limits(data: Any) -> Any:
    """Turn the design's string values (``max_memory="2GB"``) into the integers the strict
    fields take; refuse a limit given under both of its names."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, alias in DESIGN_LIMIT_NAMES.items():
        if name in data and alias in data:
            raise ValueError(f"{name} and {alias} are the same limit: give one of them")
        if alias in data:
            data[alias] = _design_value(alias, data[alias])
    return data


_FIELD_OF_DESIGN_NAME = {alias: name for name, alias in DESIGN_LIMIT_NAMES.items()}


class ResourceLimits(StrictModel):
    """Per-session quotas; every value must be a positive integer within its bound.

    The original design's names are accepted as aliases: ``max_memory`` (MiB, or a string such
    as ``"2GB"``), ``max_cpu_percent``, ``max_execution_time`` (seconds, or ``"30m"``) and
    ``max_disk_usage`` (MiB, or ``"10GB"``). Fields keep agentrt's names, and read under the
    design's names too (``limits.max_memory`` is ``limits.memory_mb``, in MiB).

    A subclass may set defaults under either name, as the design's own class did::

        class AgentLimits(ResourceLimits):
            max_memory: str = "2GB"          # memory_mb defaults to 2048
            max_execution_time: int = 1800   # time_seconds defaults to 1800
    """

    if TYPE_CHECKING:  # read through __getattr__ below
        @property
        def max_memory(self) -> int: ...
        @property
        def max_cpu_percent(self) -> int: ...
        @property
        def max_execution_time(self) -> int: ...
        @property
        def max_disk_usage(self) -> int: ...

    memory_mb: MemoryMb = Field(1024, validation_alias=_alias("memory_mb"),
                                description="Memory limit in MiB; swap is not allowed.")
    cpu_percent: CpuPercent = Field(50, validation_alias=_alias("cpu_percent"),
                                    description="Percent of one core: 200 means two cores.")
    time_seconds: TimeSeconds = Field(3600, validation_alias=_alias("time_seconds"),
                                      description="Wall-time limit, from container start.")
    disk_mb: DiskMb = Field(5120, validation_alias=_alias("disk_mb"),
                            description="Size of the volume holding the worktree, MiB.")
    pids: Pids = Field(512, description="Maximum number of processes and threads.")

    @model_validator(mode="before")
    @classmethod
    def _design_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # Design names a subclass declared as fields of its own: their values (given, else
        # the subclass's default) are the limits', and the subclass's fields keep them too.
        declared = {alias: info for alias, info in cls.model_fields.items()
                    if alias in _FIELD_OF_DESIGN_NAME}
        own = {alias: data[alias] for alias in declared if alias in data}
        limits = _design_limits({k: v for k, v in data.items() if k not in declared})
        for alias, info in declared.items():
            name = _FIELD_OF_DESIGN_NAME[alias]
            if name in limits and alias in own:
                raise ValueError(f"{name} and {alias} are the same limit: give one of them")
            if name not in limits:
                limits[name] = _design_value(alias, own.get(alias, info.get_default(
                    call_default_factory=True)))
        return {**limits, **own}

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the design's names read agentrt's fields.
        field = _FIELD_OF_DESIGN_NAME.get(name)
        if field is not None:
            return getattr(self, field)
        return super().__getattr__(name)  # type: ignore[misc]


def plain_limits(limits: ResourceLimits) -> ResourceLimits:
    """``limits`` as agentrt's own model: a subclass's values without its extra fields."""
    if type(limits) is ResourceLimits:
        return limits
    return ResourceLimits(**{name: getattr(limits, name) for name in ResourceLimits.model_fields})


class LimitOverrides(StrictModel):
    """A task's partial override of the run's default :class:`ResourceLimits` (the design's
    names are accepted here too)."""

    memory_mb: MemoryMb | None = Field(None, validation_alias=_alias("memory_mb"),
                                       description="Memory limit in MiB.")
    cpu_percent: CpuPercent | None = Field(None, validation_alias=_alias("cpu_percent"),
                                           description="Percent of one core.")
    time_seconds: TimeSeconds | None = Field(None, validation_alias=_alias("time_seconds"),
                                             description="Wall-time limit in seconds.")
    disk_mb: DiskMb | None = Field(None, validation_alias=_alias("disk_mb"),
                                   description="Volume size in MiB.")
    pids: Pids | None = Field(None, description="Maximum number of processes.")

    _design_names = model_validator(mode="before")(_design_limits)

    def apply_to(self, limits: ResourceLimits) -> ResourceLimits:
        """Return ``limits`` with every value set here replacing the default."""
        return limits.model_copy(update=self.model_dump(exclude_none=True))

