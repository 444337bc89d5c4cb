"""egress_allow: parsing, the proxy's filter and configuration, and the task file's checks."""

from __future__ import annotations

import re

import pytest

from runtime.config import RunConfig, Task, check_egress, parse_task_file
from runtime.egress_rules import (
    EgressTarget,
    connect_ports,
    filter_rules,
    parse_target,
    parse_targets,
    policy_key,
    proxy_config,
    proxy_env,
)
from runtime.errors import ConfigError
from runtime.run.network_preflight import network_problem


@pytest.mark.parametrize(("entry", "target"), [
    ("api.anthropic.com", EgressTarget("api.anthropic.com")),
    ("Models.Internal:8080", EgressTarget("models.internal", 8080)),
    ("my_llm:11434", EgressTarget("my_llm", 11434)),
    ("10.0.0.7:443", EgressTarget("10.0.0.7", 443)),
    ("*.example.com", EgressTarget("*.example.com")),
])
def test_good_entries(entry: str, target: EgressTarget) -> None:
    assert parse_target(entry) == target


@pytest.mark.parametrize(("entry", "words"), [
    ("", "empty"),
    ("https://api.example.com", "scheme"),
    ("api.example.com/v1", "path"),
    ("host:0", "1 to 65535"),
    ("host:65536", "1 to 65535"),
    ("host:http", "1 to 65535"),
    ("host:", "1 to 65535"),
    ("[::1]:80", "IPv6"),
    ("a:b:c", "IPv6"),
    ("-bad.com", "not a host name"),
    ("bad..com", "not a host name"),
    ("sp ace.com", "not a host name"),
    ("a.*.com", "not a host name"),
    ("x" * 254, "not a host name"),
])
def test_bad_entries_say_what_is_wrong(entry: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_target(entry)


def _allows(rules: list[str], url: str) -> bool:
    # tinyproxy: extended regexes, case-insensitive, matched against the request's URL.
    return any(re.search(rule, url, re.IGNORECASE) for rule in rules)


def test_the_filter_allows_exactly_the_listed_hosts_and_ports() -> None:
    rules = filter_rules(parse_targets(["api.example.com", "models.internal:8080",
                                        "*.cdn.test"]))
    allowed = ["http://api.example.com/", "http://api.example.com", "http://API.example.com/x",
               "http://api.example.com:80/x", "api.example.com:443",
               "http://models.internal:8080/v1/chat", "models.internal:8080",
               "a.cdn.test:443", "http://x.y.cdn.test/"]
    refused = ["http://api.example.com:8080/", "api.example.com:22", "pypi.org:443",
               "http://pypi.org/simple/", "http://api.example.com.evil.com/",
               "api.example.com.evil.com:443", "http://api.example.com@evil.com/",
               "http://api.example.com:80@evil.com/", "api.example.com:443@evil.com:443",
               "http://evil.com/?api.example.com", "http://models.internal/",
               "models.internal:443", "http://models.internal:80801/", "apixexample.com:443",
               "cdn.test:443", "http://evilcdn.test/", "http://10.0.0.1:8080/"]
    for url in allowed:
        assert _allows(rules, url), url
    for url in refused:
        assert not _allows(rules, url), url


def test_connect_ports_and_the_proxy_configuration() -> None:
    targets = parse_targets(["a.com", "b.com:8443", "c.com:80"])
    assert connect_ports(targets) == [80, 443, 8443]
    config = proxy_config(targets)
    for line in ("FilterDefaultDeny Yes", "FilterURLs On", "FilterType ere",
                 "ConnectPort 443", "ConnectPort 8443", 'Filter "/tmp/filter"'):
        assert line in config.splitlines()
    with pytest.raises(ValueError):
        proxy_config([])


def test_proxy_env_and_policy_keys() -> None:
    env = proxy_env()
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://agentrt-egress:8888"
    assert "localhost" in env["NO_PROXY"] and env["no_proxy"] == env["NO_PROXY"]
    one = policy_key(parse_targets(["b.com", "a.com:1"]), ["n2", "n1"])
    assert one == policy_key(parse_targets(["a.com:1", "b.com", "B.com"]), ["n1", "n2"])
    assert one != policy_key(parse_targets(["a.com:1"]), ["n1", "n2"])


TASK = '[[tasks]]\nid = "a"\ncommand = ["true"]\n'


@pytest.mark.parametrize(("text", "words"), [
    ('[run]\nnetwork = "allowlist"\n' + TASK, ["[run]", "field egress_allow", "at least one"]),
    ('[[tasks]]\nid = "a"\ncommand = ["true"]\nnetwork = "allowlist"\n',
     ["task 'a'", "field egress_allow", "at least one"]),
    ('[run]\nnetwork = "allowlist"\negress_allow = ["x.com"]\n'
     '[[tasks]]\nid = "a"\ncommand = ["true"]\negress_allow = []\n',
     ["task 'a'", "field egress_allow", "at least one"]),
    ('[run]\nnetwork = "allowlist"\negress_allow = ["x.com:99999"]\n' + TASK,
     ["[run]", "field egress_allow", "1 to 65535"]),
    ('[[tasks]]\nid = "a"\ncommand = ["true"]\nnetwork = "allowlist"\n'
     'egress_allow = ["https://x.com"]\n', ["task 'a'", "field egress_allow", "scheme"]),
    ('[run]\nnetwork = "allowlist"\negress_allow = ["x.com"]\negress_networks = ["bad name"]\n'
     + TASK, ["[run]", "field egress_networks", "not a Docker network name"]),
    ('[[tasks]]\nid = "a"\ncommand = ["true"]\negress_allow = ["x.com"]\n',
     ["task 'a'", "field egress_allow", "only used with network"]),
    ('[[tasks]]\nid = "a"\nagent = "aider"\nbase_url = "ftp://x"\n',
     ["task 'a'", "field base_url"]),
    ('[[tasks]]\nid = "a"\nagent = "aider"\nmodel = "--exec"\n', ["task 'a'", "field model"]),
    ('[run]\nnetwork = "internet"\n' + TASK, ["[run]", "field network"]),
])
def test_task_file_errors_name_the_field(text: str, words: list[str]) -> None:
    import tomllib

    with pytest.raises(ConfigError) as caught:
        parse_task_file(tomllib.loads(text), "tasks.toml")
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_task_egress_keys_override_the_runs() -> None:
    config = RunConfig(network="allowlist", egress_allow=["a.com"], egress_networks=["n"])
    task = Task(id="t", command=["true"], egress_allow=["b.com:1"])
    assert config.egress_for(task) == (["b.com:1"], ["n"])
    check_egress(config, [task, Task(id="u", command=["true"])])


def test_an_agent_preset_needs_a_network_and_an_external_database_is_out_of_reach() -> None:
    agent = Task(id="x", agent="codex", prompt="hi")
    problem = network_problem(RunConfig(), [agent])
    assert problem and "task 'x': field network" in problem and "allowlist" in problem
    assert network_problem(RunConfig(), [Task(id="s", agent="shell", prompt="ls")]) is None
    assert network_problem(RunConfig(), [agent.model_copy(update={"command": ["true"]})]) is None
    allow = RunConfig(network="allowlist", egress_allow=["api.openai.com"])
    assert network_problem(allow, [agent]) is None
    external = allow.model_copy(update={"database_strategy": "shared",
                                        "database_url": "postgresql://a:b@db:5432/x"})
    assert "database_url" in (network_problem(external, [agent]) or "")
