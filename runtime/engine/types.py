"""The names by which the rest of agentrt holds engine objects.

Only ``runtime/engine/`` and ``runtime/backends/`` import the Docker SDK
(``tests/unit/test_layers.py`` checks it); code above them that has to *name* an engine client
or a mount (in a signature, a dataclass field) uses these aliases, and asks ``engine/`` to do
anything with them.
"""

from __future__ import annotations

from typing import TypeAlias

import docker
import docker.types

#: A connection to a Docker engine (:func:`runtime.engine.discovery.get_client` gives one).
EngineClient: TypeAlias = docker.DockerClient
#: A mount of a container (bind, volume or tmpfs) as the engine takes it.
Mount: TypeAlias = docker.types.Mount
