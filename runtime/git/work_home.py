"""Bringing a session's work home: the harvest's bundles verified and imported onto its branch.

:func:`bring_work_home` runs a harvest (:mod:`runtime.git.harvest`: a container reads the tree
where it is and leaves bundles), imports ``work.bundle`` with
:func:`runtime.git.bundle.import_bundle` (or, when the agent's own commits are refused,
``files.bundle``) and moves the branch with a
compare-and-swap. It never raises for the agent's doing: the outcome says home, files only,
refused or kept (the volume stays for a later retry).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import paths
from runtime.engine.types import EngineClient
from runtime.errors import BundleRefusedError, GitError, HarvestError, HarvestTooLargeError
from runtime.git.bundle import (
    ImportPolicy,
    SecretInBundleError,
    import_bundle,
    redact_secrets,
)
from runtime.git.harvest import Harvest, HarvestPlan, run_harvest
from runtime.git.safe_git import MainRepo
from runtime.models import WorkState


@dataclass
class WorkOutcome:
    """How a session's work came home: its state, the branch head, and what to tell the user."""

    state: WorkState
    head: str | None
    warnings: list[str] = field(default_factory=list)


Harvester = Callable[[HarvestPlan, Path, int], Harvest]


def bring_work_home(client: EngineClient, repo: MainRepo, plan: HarvestPlan, *,
                    branch: str, policy: ImportPolicy,
                    harvester: Harvester | None = None) -> WorkOutcome:
    """Harvest ``plan``'s working tree and move ``branch`` onto what the agent left.

    See :func:`_bring_work_home`; every warning is passed through
    :func:`runtime.git.bundle.redact_secrets` here, the one place work messages are made,
    before anything records, logs or shows them.
    """
    outcome = _bring_work_home(client, repo, plan, branch=branch, policy=policy,
                               harvester=harvester)
    outcome.warnings = [redact_secrets(w, policy.secrets) for w in outcome.warnings]
    return outcome


def _bring_work_home(client: EngineClient, repo: MainRepo, plan: HarvestPlan, *,
                     branch: str, policy: ImportPolicy,
                     harvester: Harvester | None = None) -> WorkOutcome:
    """Harvest ``plan``'s working tree and move ``branch`` onto what the agent left.

    Never raises for the agent's doing: a refused bundle is kept as ``rejected-*.bundle`` under
    ``<state>/harvest/<session>/`` and reported; a harvest that cannot finish (engine gone, disk
    full) reports ``kept`` so the caller keeps the volume for a later retry. ``harvester``
    runs the harvest where the tree is (default: :func:`run_harvest` on ``client``'s engine).
    """
    dest = paths.harvest_dir(repo.state_dir, plan.session_id)
    current = repo.branch_head(branch)
    if current is None:
        return WorkOutcome(WorkState.KEPT, None, [f"session branch {branch} is missing; the "
                                                  "volume is kept"])
    try:
        if harvester is None:
            harvest = run_harvest(client, plan, dest, policy.max_import_bytes)
        else:
            harvest = harvester(plan, dest, policy.max_import_bytes)
    except HarvestTooLargeError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        return WorkOutcome(WorkState.REFUSED, current, [
            f"work refused: {exc}; the branch stays at {current[:10]}"])
    except HarvestError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        return WorkOutcome(WorkState.KEPT, current, [
            f"work not brought home yet: {exc}; the volume is kept: run `agentrt recover "
            f"{plan.session_id}` (or `agentrt gc`) to retry"])
    warnings: list[str] = []
    if harvest.unreadable_files:
        warnings.append("some files could not be read by the harvest and were left out")
    if harvest.head_unreadable:
        warnings.append("the agent's own commits could not be imported (its .git was replaced, "
                        "removed or unreadable); its files were saved as a snapshot instead")
    if harvest.unchanged:
        shutil.rmtree(dest, ignore_errors=True)
        return WorkOutcome(WorkState.HOME, current, warnings)
    state = WorkState.HOME
    try:
        try:
            head = import_bundle(repo, harvest.bundles["work.bundle"], branch=branch,
                                 base_commit=plan.base_commit, policy=policy,
                                 refs=asked_refs(plan.session_id, "work"))
        except BundleRefusedError as exc:
            _keep_rejected(harvest.bundles["work.bundle"], exc)
            files = harvest.bundles.get("files.bundle")
            if files is None:
                warnings.append(f"work refused: {exc}; the branch stays at {current[:10]}; the "
                                f"bundle is kept in {dest}")
                return WorkOutcome(WorkState.REFUSED, current, warnings)
            try:
                head = import_bundle(repo, files, branch=branch, base_commit=plan.base_commit,
                                     policy=policy, refs=asked_refs(plan.session_id, "files"))
            except BundleRefusedError as files_exc:
                _keep_rejected(files, files_exc)
                warnings.append(f"work refused: {files_exc}; the branch stays at {current[:10]};"
                                f" the bundles are kept in {dest}")
                return WorkOutcome(WorkState.REFUSED, current, warnings)
            warnings.append(f"the agent's own commits were refused: {exc}; its files came home "
                            f"as one commit on the base; the refused bundle is kept in {dest}")
            state = WorkState.FILES_ONLY
        from runtime.git.workspace import repo_lock

        with repo_lock(repo):
            repo.update_ref(f"refs/heads/{branch}", head, current,
                            f"agentrt: work of session {plan.session_id}")
    except (GitError, OSError) as exc:
        # The bundle stays too, next to the kept volume, until a retry brings the work home.
        return WorkOutcome(WorkState.KEPT, current, [
            *warnings, f"work not brought home yet: {exc}; the volume is kept: run `agentrt "
            f"recover {plan.session_id}` (or `agentrt gc`) to retry"])
    if state is WorkState.HOME:
        shutil.rmtree(dest, ignore_errors=True)
    else:
        for name, path in harvest.bundles.items():
            if name != "work.bundle" and path.exists():
                path.unlink()
    return WorkOutcome(state, head, warnings)


def asked_refs(session_id: str, name: str) -> frozenset[str]:
    """The refs a harvest's ``name`` bundle may carry: the harvest's own branch, or the
    exchange's ref of the session (Swarm). Pure."""
    return frozenset({f"refs/heads/{name}", f"refs/work/{session_id}/{name}"})


def _keep_rejected(bundle: Path, reason: BundleRefusedError) -> None:
    """Keep a refused bundle for inspection, unless it holds a secret (then it goes)."""
    with contextlib.suppress(OSError):
        if isinstance(reason, SecretInBundleError):
            bundle.unlink()
        else:
            bundle.rename(bundle.with_name(f"rejected-{bundle.name}"))
