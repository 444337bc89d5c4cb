"""Every ``python`` block of docs/python-api.md runs as written against a real engine, each on a
fresh demo repository (the page's /tmp/api paths point into the test's own directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_runner import ROOT, Block, extract_blocks

PAGE = ROOT / "docs" / "python-api.md"
BLOCKS = [b for b in extract_blocks(PAGE.read_text(encoding="utf-8"), "docs/python-api.md")
          if b.language == "python"]


def test_the_page_has_its_examples() -> None:
    # The design's sketch, the session, the coordinator, merging, reverting, directory mode.
    texts = "\n".join(b.text for b in BLOCKS)
    for needle in ('IsolatedAgentSession("fix-parser", base_workspace=', "revert_session(",
                   '"isolation_strategy": "directory"', "merge_agent_results(report"):
        assert needle in texts
    signatures = [b for b in extract_blocks(PAGE.read_text(encoding="utf-8"), "p")
                  if b.text.startswith(("IsolatedAgentSession(", "AgentCoordinator("))]
    assert all(b.language == "text" for b in signatures)  # signatures are not code to run


@pytest.mark.docker
@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_python_example_runs_as_written(block: Block, tmp_path: Path,
                                              docker_client: object) -> None:
    base = tmp_path / "api"
    subprocess.run([str(ROOT / "examples" / "make-demo-repo"), str(base / "repo")], check=True,
                   capture_output=True)
    (base / "bad.toml").write_text(
        "[run]\nmax_concurrent_agents = 0\n[[tasks]]\nid = \"t\"\ncommand = [\"true\"]\n")
    code = block.text.replace("/tmp/api", str(base))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTRT_STATE_HOME": str(base / "state")}
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:  # a branch's carried state (agentrt continue) outlives its sessions by design
        for volume in docker_client.volumes.list(  # type: ignore[attr-defined]
                filters={"label": ["agentrt.role=carry", f"agentrt.repo={base / 'repo'}"]}):
            volume.remove(force=True)
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stderr[-3000:]}"
    if "print(" in block.text:
        assert proc.stdout.strip(), f"{block.where} printed nothing"
    left = docker_client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": f"agentrt.repo={base / 'repo'}"})
    assert not left, f"{block.where} left containers behind"
