"""The script of Swarm's node helper service (:mod:`runtime.backends.swarm.volumes`): stdlib
Python in ``agentrt/base``, run as root (every capability dropped) with the node engine's
socket, that has that engine run agentrt's helper containers, one after another."""

# Runs in agentrt/base on the node, root, the node engine's socket at NODE_SOCKET. argv[1]: the
# job (JSON): api, state ("" = the node's default), lift_lsm, container (a create body with
# @STATE@, run as the loop helper; null: none), volume (a named volume to make first, or
# null), remove_volume (a name to remove after success, or null), timeout, and optionally
# then: further steps once the container succeeded, each {"gate": {"url", "go", "stop",
# "timeout", "on_timeout"} or null,
# "container": a body (@STATE@, and @SELF@ for this task's own container, whose network it
# may share) or null, "loop": whether it is a loop helper (its node's LSM exception added),
# "remove_volume": a name or null, "ok": exit codes that go on}, and undo:
# a body run (and the named volume removed) when a step after the first fails. A gate waits
# until the exchange at url has the ref go (then the step runs) or stop (then the job ends
# here, successfully); at its timeout it fails, or ends the job if on_timeout is "stop".
# Prints the state line, each step's output and an "agentrt-node: step N exit=C" line; exits
# with the first failing step's code, 0 when all went on, or 70 if the job itself failed.
NODE_SCRIPT = r'''
import http.client, json, os, socket, subprocess, sys, time
job = json.loads(sys.argv[1])
V = "/v" + job["api"]

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect("/var/run/docker.sock")

def call(method, path, body=None, ok=(200, 201, 204), timeout=60):
    conn = Conn("localhost", timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, V + path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    if resp.status not in ok:
        text = raw.decode(errors="replace")[:500]
        raise RuntimeError("%s %s: %s %s" % (method, path, resp.status, text))
    return resp.status, raw

def demux(raw):
    out, i = [], 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4:i + 8], "big")
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return b"".join(out)

def filled(doc, fill):
    text = json.dumps(doc)
    for key, value in fill.items():
        text = text.replace(key, value)
    return json.loads(text)

def run(body):
    cid = json.loads(call("POST", "/containers/create", body)[1])["Id"]
    try:
        call("POST", "/containers/%s/start" % cid)
        done = call("POST", "/containers/%s/wait" % cid, timeout=job["timeout"])[1]
        logs = call("GET", "/containers/%s/logs?stdout=1&stderr=1" % cid)[1]
        sys.stdout.write(demux(logs).decode(errors="replace"))
        sys.stdout.flush()
        return int(json.loads(done)["StatusCode"])
    finally:
        call("DELETE", "/containers/%s?force=1&v=1" % cid, ok=(204, 404))

def gate(g):
    env = dict(os.environ, HOME="/tmp", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_TERMINAL_PROMPT="0")
    end = time.monotonic() + g["timeout"]
    while time.monotonic() < end:
        refs = [g["go"]] + ([g["stop"]] if g.get("stop") else [])
        got = subprocess.run(["git", "ls-remote", g["url"]] + refs, env=env, cwd="/tmp",
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        names = [line.split()[-1] for line in got.stdout.decode().splitlines() if line.strip()]
        if g["go"] in names:
            return "go"
        if g.get("stop") in names:
            return "stop"
        time.sleep(0.1)
    return "stop" if g.get("on_timeout") == "stop" else "timeout"

def main():
    info = json.loads(call("GET", "/info")[1])
    root = str(info.get("DockerRootDir") or "/var/lib/docker").rstrip("/")
    state = job["state"] or root + "/agentrt"
    if not state.startswith("/") or "/.." in state or any(c in state for c in "\"\\:,"):
        raise RuntimeError("unusable state directory %r" % state)
    print("agentrt-node: state=" + state, flush=True)
    me = json.loads(call("GET", "/containers/%s/json" % socket.gethostname(),
                         ok=(200, 404))[1] or b"{}").get("Id", "")
    fill = {"@STATE@": state, "@SELF@": me}
    lsm = " ".join(str(o) for o in info.get("SecurityOptions") or [])
    def loop_body(doc):
        body = filled(doc, fill)
        opts = body["HostConfig"].setdefault("SecurityOpt", [])
        if job["lift_lsm"] and "name=apparmor" in lsm:
            opts.append("apparmor=unconfined")
        if job["lift_lsm"] and "name=selinux" in lsm:
            opts.append("label=disable")
        return body
    first = [{"gate": None, "container": job["container"], "loop": True,
              "remove_volume": job["remove_volume"], "ok": [0]}] if job["container"] else []
    steps = first + job.get("then", [])
    volume = filled(job["volume"], fill) if job["volume"] else None
    if volume:
        if call("GET", "/volumes/" + volume["Name"], ok=(200, 404))[0] == 200:
            raise RuntimeError("named volume %s already exists on this node" % volume["Name"])
        call("POST", "/volumes/create", volume)
    made, code = False, 70
    try:
        for i, step in enumerate(steps):
            code = 70
            if step["gate"]:
                how = gate(step["gate"])
                print("agentrt-node: gate %d %s" % (i, how), flush=True)
                if how == "stop":
                    code = 0
                    return code
                if how == "timeout":
                    code = 75
                    print("agentrt-node: step %d exit=%d" % (i, code), flush=True)
                    return code
            code = 0
            if step["container"]:
                body = filled(step["container"], fill) if not step.get("loop") \
                    else loop_body(step["container"])
                if not me and "@SELF@" in json.dumps(step["container"]):
                    raise RuntimeError("this task's own container is not on this engine")
                code = run(body)
            print("agentrt-node: step %d exit=%d" % (i, code), flush=True)
            if code not in step["ok"]:
                return code
            made = True
            code = 0
            if step["remove_volume"]:
                call("DELETE", "/volumes/%s?force=1" % step["remove_volume"], ok=(204, 404))
        return 0
    finally:
        if volume and code != 0:
            if made and job.get("undo"):
                run(loop_body(job["undo"]))
            call("DELETE", "/volumes/%s?force=1" % volume["Name"], ok=(204, 404))

try:
    sys.exit(main())
except Exception as exc:
    print("agentrt-node: %s" % exc, file=sys.stderr, flush=True)
    sys.exit(70)
'''
