"""A scripted model server for the real-agent tests (stdlib only; runs in agentrt/base).

It speaks just enough of three APIs for each preset CLI to make one edit and finish:

* Anthropic Messages (``POST /v1/messages``, claude-code): the first request that offers the
  ``Write`` tool gets a ``tool_use`` writing ``hello-claude.txt``; once a ``tool_result``
  comes back, a closing text. Requests without tools (titles, checks) get a short text.
* OpenAI Responses (``POST /v1/responses``, codex): a function (or custom) tool call that
  writes ``hello-codex.txt`` through whichever shell or patch tool codex offers; once its
  output comes back, a closing message.
* OpenAI Chat Completions (``POST /v1/chat/completions``, aider through litellm): a reply that
  creates ``hello-aider.txt`` in the edit format aider's system prompt asks for, as a model
  would: ``diff`` (a SEARCH/REPLACE block), ``udiff`` (a unified diff) or ``whole``. Nothing
  here is tuned to the format agentrt chooses.

A *follow-up* (a prompt holding the word ``follow-up``: ``agentrt continue``) is answered with
a write of ``followup-<cli>.txt`` (``followup-again-<cli>.txt`` when it says "again") saying ``remembered`` when the request carries the earlier
turn (the first prompt and the closing text the server gave it), ``forgot`` when it does not;
the log line says which (``history``). That is how the tests see that a continued agent
remembers.

Every answer is streamed (SSE) when the request asks for it, and reports token usage. Each
request is logged to stdout as one JSON line: path, the peer's address, whether the API key
matched (``EXPECT_KEY_SHA256``: the server never sees the key in its own configuration, only
its hash) and what was answered. The key itself is never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPECT = os.environ.get("EXPECT_KEY_SHA256", "")
PORT = int(os.environ.get("PORT", "8080"))
IN_TOKENS, OUT_TOKENS = 1200, 34
COUNTER = iter(range(1, 10**9))
LOCK = threading.Lock()

CODEX_FILE, CODEX_TEXT = "/workspace/hello-codex.txt", "hello from codex\n"
CLAUDE_FILE, CLAUDE_TEXT = "/workspace/hello-claude.txt", "hello from claude-code\n"
CLAUDE_DONE = "Done: hello-claude.txt is written."
CODEX_DONE = "Done: hello-codex.txt."
FOLLOW_UP = "follow-up"


def _follow_name(prompt: str, cli: str) -> str:
    """The file a follow-up writes: ``followup-<cli>.txt``, ``followup-again-<cli>.txt`` for
    a prompt saying "again" (a CLI may refuse to overwrite a file it has not read)."""
    return f"followup-again-{cli}.txt" if "again" in prompt else f"followup-{cli}.txt"


def _what_to_write(prompt: str, earlier: list, cli: str, done: str, path: str,
                   text: str) -> tuple[bool | None, str, str]:
    """(history, path, content) of the file a request's answer writes: the CLI's own file, or
    for a follow-up its follow-up file saying whether ``done`` (the CLI's earlier turn) is in
    the earlier messages (history is None when the prompt is no follow-up)."""
    if FOLLOW_UP not in prompt:
        return None, path, text
    history = done in " ".join(_texts(earlier))
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return history, folder + _follow_name(prompt, cli), "remembered\n" if history else "forgot\n"


def _texts(value: object) -> list[str]:
    """Every string inside a request's messages (content blocks, nested lists)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _texts(item)]
    return []


def _turn(messages: list, is_result: object) -> tuple[str, bool, list]:
    """The latest prompt (the last message holding FOLLOW_UP, else the last user message that
    is not a tool result), whether a tool result came back after it, and the messages before
    it (the earlier turns)."""
    last = 0
    for n, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user" and not is_result(message):
            last = n
    follow = [n for n, m in enumerate(messages) if FOLLOW_UP in " ".join(_texts(m))]
    if follow:
        last = follow[-1]
    prompt = " ".join(_texts(messages[last:last + 1]))
    returned = any(is_result(m) for m in messages[last + 1:])
    return prompt, returned, messages[:last]
AIDER_FILE, AIDER_TEXT = "hello-aider.txt", "hello from aider\n"


def _next_id(prefix: str) -> str:
    with LOCK:
        return f"{prefix}_{next(COUNTER)}"


def log(**fields: object) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    """Routes by path; answers every API call in the shape its client expects."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet: requests are logged as JSON
        pass

    # -- plumbing ------------------------------------------------------------------------

    def _key(self) -> str:
        key = self.headers.get("x-api-key") or ""
        auth = self.headers.get("authorization") or ""
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return "missing"
        return "ok" if hashlib.sha256(key.encode()).hexdigest() == EXPECT else "wrong"

    def _body(self) -> dict:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, object]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for name, payload in events:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            chunk = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    def _record(self, path: str, body: dict, answer: str, **extra: object) -> None:
        log(path=path, client=self.client_address[0], auth=self._key(),
            model=body.get("model"), stream=bool(body.get("stream")), answer=answer, **extra)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        log(path=self.path, client=self.client_address[0], auth=self._key(), answer="get")
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [], "models": []})
        else:
            self._json(404, {"error": {"message": f"no {self.path}"}})

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/messages/count_tokens"):
            self._record(path, body, "count_tokens")
            self._json(200, {"input_tokens": IN_TOKENS})
        elif path.endswith("/messages"):
            self._anthropic(path, body)
        elif path.endswith("/responses"):
            self._responses(path, body)
        elif path.endswith("/chat/completions"):
            self._chat(path, body)
        else:
            self._record(path, body, "404")
            self._json(404, {"error": {"message": f"no {path}"}})

    # -- Anthropic Messages ----------------------------------------------------------------

    def _anthropic(self, path: str, body: dict) -> None:
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        messages = body.get("messages") or []

        def is_result(m: object) -> bool:
            return isinstance(m, dict) and isinstance(m.get("content"), list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])

        prompt, returned, earlier = _turn(messages, is_result)
        history, target, content = _what_to_write(prompt, earlier, "claude", CLAUDE_DONE,
                                                  CLAUDE_FILE, CLAUDE_TEXT)
        if "Write" in tools and not returned:
            block = {"type": "tool_use", "id": _next_id("toolu"), "name": "Write",
                     "input": {"file_path": target, "content": content}}
            stop, answer = "tool_use", "tool_use Write"
        else:
            text = CLAUDE_DONE if returned and history is None else \
                "Done: the follow-up is written." if returned else "OK"
            block = {"type": "text", "text": text}
            stop, answer = "end_turn", "text"
        self._record(path, body, answer, tools=len(tools), history=history)
        message = {"id": _next_id("msg"), "type": "message", "role": "assistant",
                   "model": body.get("model") or "scripted", "stop_reason": None,
                   "stop_sequence": None,
                   "usage": {"input_tokens": IN_TOKENS, "output_tokens": 1,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        if not body.get("stream"):
            self._json(200, {**message, "content": [block], "stop_reason": stop,
                             "usage": {**message["usage"], "output_tokens": OUT_TOKENS}})
            return
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        self._sse([
            ("message_start", {"type": "message_start", "message": {**message, "content": []}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": start}),
            ("ping", {"type": "ping"}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": OUT_TOKENS}}),
            ("message_stop", {"type": "message_stop"}),
        ])

    # -- OpenAI Responses ------------------------------------------------------------------

    def _codex_call(self, tools: list[dict], target: str = CODEX_FILE,
                    text: str = CODEX_TEXT) -> tuple[dict, str] | None:
        """A tool call that writes the file, through the first tool codex offers that can."""
        command = f"printf '{text.strip()}\\n' > {target}"
        patch = (f"*** Begin Patch\n*** Add File: {target}\n+{text.strip()}\n"
                 "*** End Patch\n")
        by_name = {str(t.get("name") or t.get("type")): t for t in tools}
        call_id = _next_id("call")

        def function(name: str, arguments: dict) -> dict:
            return {"type": "function_call", "id": _next_id("fc"), "call_id": call_id,
                    "name": name, "arguments": json.dumps(arguments), "status": "completed"}

        if "shell_command" in by_name:
            return function("shell_command", {"command": command, "workdir": "/workspace"}), \
                "shell_command"
        if "shell" in by_name and by_name["shell"].get("type") == "function":
            return function("shell", {"command": ["bash", "-lc", command],
                                      "workdir": "/workspace"}), "shell"
        if "exec_command" in by_name:
            return function("exec_command", {"cmd": command, "workdir": "/workspace"}), \
                "exec_command"
        if "apply_patch" in by_name:
            if by_name["apply_patch"].get("type") == "custom":
                return {"type": "custom_tool_call", "id": _next_id("ctc"), "call_id": call_id,
                        "name": "apply_patch", "input": patch, "status": "completed"}, \
                    "apply_patch (custom)"
            return function("apply_patch", {"input": patch}), "apply_patch"
        if "local_shell" in by_name:
            return {"type": "local_shell_call", "id": _next_id("lsc"), "call_id": call_id,
                    "status": "completed",
                    "action": {"type": "exec", "command": ["bash", "-lc", command],
                               "working_directory": "/workspace"}}, "local_shell"
        return None

    def _responses(self, path: str, body: dict) -> None:
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        items = [i for i in body.get("input") or [] if isinstance(i, dict)]
        prompt, returned, earlier = _turn(
            items, lambda i: str(i.get("type", "")).endswith("_output"))
        history, target, content = _what_to_write(prompt, earlier, "codex", CODEX_DONE,
                                                  CODEX_FILE, CODEX_TEXT)
        call = None if returned else self._codex_call(tools, target, content)
        if call is not None:
            item, answer = call
        else:
            done = CODEX_DONE if history is None else "Done: the follow-up is written."
            item = {"type": "message", "id": _next_id("msg"), "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": done, "annotations": []}]}
            answer = "message"
        self._record(path, body, answer, history=history,
                     tools=[str(t.get("name") or t.get("type")) for t in tools])
        response_id = _next_id("resp")
        usage = {"input_tokens": IN_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": OUT_TOKENS,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": IN_TOKENS + OUT_TOKENS}
        response = {"id": response_id, "object": "response", "created_at": 0,
                    "status": "completed", "model": body.get("model") or "scripted",
                    "output": [item], "usage": usage}
        if not body.get("stream"):
            self._json(200, response)
            return
        events: list[tuple[str | None, object]] = [
            ("response.created", {"type": "response.created", "sequence_number": 0,
                                  "response": {**response, "status": "in_progress",
                                               "output": [], "usage": None}}),
            ("response.output_item.added", {"type": "response.output_item.added",
                                            "sequence_number": 1, "output_index": 0,
                                            "item": item}),
        ]
        if item["type"] == "message":
            events.append(("response.output_text.delta", {
                "type": "response.output_text.delta", "sequence_number": 2,
                "item_id": item["id"], "output_index": 0, "content_index": 0,
                "delta": item["content"][0]["text"]}))
        events += [
            ("response.output_item.done", {"type": "response.output_item.done",
                                           "sequence_number": 3, "output_index": 0,
                                           "item": item}),
            ("response.completed", {"type": "response.completed", "sequence_number": 4,
                                    "response": response}),
        ]
        self._sse(events)

    # -- OpenAI Chat Completions -----------------------------------------------------------

    @staticmethod
    def _aider_edit(body: dict) -> tuple[str, str, bool | None]:
        """The reply creating AIDER_FILE in the format the system prompt asks for (a
        follow-up's file when the prompt is one: see the module docstring)."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        prompt, _, earlier = _turn(messages, lambda m: False)
        history, name, text = _what_to_write(prompt, earlier, "aider", AIDER_TEXT.strip(),
                                             AIDER_FILE, AIDER_TEXT)
        system = ""
        for message in body.get("messages") or []:
            if isinstance(message, dict) and message.get("role") == "system":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(str(p.get("text", "")) for p in content
                                       if isinstance(p, dict))
                system += str(content or "")
        if "SEARCH/REPLACE" in system:
            return (f"{name}\n```\n<<<<<<< SEARCH\n=======\n{text}"
                    ">>>>>>> REPLACE\n```\n"), "diff edit", history
        if "unified diff" in system.lower():
            return (f"```diff\n--- /dev/null\n+++ {name}\n@@ @@\n+{text}```\n",
                    "udiff edit", history)
        return f"{name}\n```\n{text}```\n", "whole edit", history

    def _chat(self, path: str, body: dict) -> None:
        text, answer, history = self._aider_edit(body)
        self._record(path, body, answer, history=history)
        usage = {"prompt_tokens": IN_TOKENS, "completion_tokens": OUT_TOKENS,
                 "total_tokens": IN_TOKENS + OUT_TOKENS}
        base = {"id": _next_id("chatcmpl"), "created": 0,
                "model": body.get("model") or "scripted"}
        if not body.get("stream"):
            self._json(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": text}}]})
            return
        chunk = {**base, "object": "chat.completion.chunk"}
        self._sse([
            (None, {**chunk, "choices": [{"index": 0, "finish_reason": None,
                                          "delta": {"role": "assistant", "content": ""}}]}),
            (None, {**chunk, "choices": [{"index": 0, "finish_reason": None,
                                          "delta": {"content": text}}]}),
            (None, {**chunk, "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}]}),
            (None, {**chunk, "choices": [], "usage": usage}),
            (None, "[DONE]"),
        ])


def main() -> None:
    """Serve until killed."""
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    log(event="listening", port=PORT)
    server.serve_forever()


if __name__ == "__main__":
    main()
