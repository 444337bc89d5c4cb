"""Crash points: where the crash-recovery tests kill agentrt (SIGKILL, like a power cut).

``AGENTRT_CRASH_AT=<name>`` makes :func:`crash_point` of that name kill the process; nothing
else sets it. The points, in the order a session meets them (each leaves something that
``agentrt gc`` must find and finish or remove):

===============  =====================================================================
``branch``       the session's branch exists (at its base); no marker yet
``marker``       its directory and marker exist; no volume yet
``seed copy``    its loop device is attached to a half-written copy of the run's seed
``volume``       its volume is made and mounted; not checked out
``checkout``     its working tree is checked out; no container yet
``container``    its container is created, not started
``started``      its container runs
``harvest``      the agent ended; its work is not harvested yet
``home``         its work is on its branch; the final record is not written
``merge``        an automatic merge landed one session's branch on the target; the
                 next has not been tried
===============  =====================================================================
"""

from __future__ import annotations

import os
import signal

CRASH_POINT_ENV = "AGENTRT_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here (SIGKILL, like a power cut) when ``AGENTRT_CRASH_AT`` names this step."""
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
