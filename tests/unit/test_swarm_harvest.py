"""The Swarm harvest container is the one-engine harvest container (pure spec checks)."""

from __future__ import annotations

from docker.types import Mount

from runtime.backends.swarm.node_jobs import node_harvest_spec
from runtime.git.harvest import HARVEST_CAPS, HARVEST_USER, OUT_DIR, HarvestPlan, harvest_spec


def test_the_swarm_harvest_container_is_the_one_engine_one_without_its_out_volume() -> None:
    plan = HarvestPlan(session_id="s1", base_commit="a" * 40, store=None, uid=1000, gid=1000,
                       memory_mb=512, mounts=(Mount("/workspace", "/st/s1/volume/workspace",
                                                    type="bind", read_only=True),))
    url = "git://agentrt-x-r1:9418/w/0123.git"
    spec = node_harvest_spec("r1", url, plan, 64 * 1024 * 1024)
    local = harvest_spec(plan, 64 * 1024 * 1024)
    assert spec["user"] == HARVEST_USER == "0:0" and spec["cap_add"] == HARVEST_CAPS
    assert spec["cap_drop"] == ["ALL"] and spec["read_only"] is True
    assert "no-new-privileges:true" in spec["security_opt"]
    for key in ("tmpfs", "mem_limit", "memswap_limit", "nano_cpus", "pids_limit", "image"):
        assert spec[key] == local[key], key
    assert [m["Target"] for m in spec["mounts"]] == ["/workspace"]
    assert all(m["ReadOnly"] for m in spec["mounts"])
    assert OUT_DIR in [m["Target"] for m in local["mounts"]]
    assert spec["network_mode"] == "container:@SELF@" and "name" not in spec
    assert "HARVEST_OUT" not in spec["environment"]
    assert spec["environment"]["GIT_CONFIG_NOSYSTEM"] == "1"
    assert spec["command"][-4:] == ["a" * 40, "", "s1", url]
    assert spec["labels"]["agentrt.harvest"] == "s1"
