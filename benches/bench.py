#!/usr/bin/env python3
"""wakeway benches: every figure is a ratio against a baseline measured in the same run.

Started by benches/run.sh (which installs the tools and builds wakeway). Standard library only.
Writes benches/results/latest.json, benches/results/latest.md and docs/bench-latency.svg.
"""

import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import baselines
import h2tls

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODE = "smoke" if "--smoke" in sys.argv else "quick" if "--quick" in sys.argv else "full"
if MODE == "smoke":
    os.environ["BENCH_PROFILE"] = "debug"  # seen by websockets.py too
# --smoke runs the debug binaries `cargo test` built: it checks that every step still works, not speed.
BIN = os.path.join(ROOT, "target", os.environ.get("BENCH_PROFILE", "release"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHP = os.path.join(HERE, "node_modules", ".bin", "configurable-http-proxy")
API_KEY = "b42e5df1bffeb871570c43de7e87f25961a5d6da3ad410f7c2098fecfe25cfb9"  # generated: wakeway refuses guessable keys
DURATION = {"full": 10, "quick": 3, "smoke": 1}[MODE]
CONCURRENCY = [1, 32, 128]
WAKES = 3 if MODE == "smoke" else 10  # a median of 10 wakes (full and quick)
HERD = 200 if MODE == "smoke" else 1000
# Registered (sleeping) sessions in the scale step.
SESSIONS = {"full": 100_000, "quick": 10_000, "smoke": 1_000}[MODE]
PROXY_WORKERS = 1  # nginx worker_processes == WAKEWAY_THREADS (2 cores: one for wrk, one for the proxy)
SMALL = b"x" * 99 + b"\n"  # 100 B
LARGE = bytes((i * 7 + 13) % 256 for i in range(100 * 1024))  # 100 KiB

procs = []


def log(*a):
    print(*a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def spawn(args, logfile, env=None, shell=False):
    f = open(logfile, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env, shell=shell,
                         start_new_session=True)
    procs.append(p)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "mem_total": open("/proc/meminfo").readline().split(":")[1].strip()}


def load_avg():
    return open("/proc/loadavg").read().split()[:3]


def tool_versions():
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"
    return {"wrk": out(["wrk", "--version"]), "nginx": out([NGINX, "-v"]),
            "configurable-http-proxy": out([CHP, "--version"]),
            "wakeway": out([os.path.join(BIN, "wakeway"), "--version"]), "h2load": out(["h2load", "--version"]),
            "openssl": out(["openssl", "version"]), **baselines.versions(out)}


# ---------------------------------------------------------------- nginx configurations

def nginx_common(dirpath):
    return f"""worker_rlimit_nofile 65536;
pid {dirpath}/nginx.pid;
error_log {dirpath}/error.log warn;
events {{ worker_connections 32768; }}
"""


def nginx_http_common(dirpath):
    return f"""access_log off;
    client_body_temp_path {dirpath}/body; proxy_temp_path {dirpath}/proxy;
    fastcgi_temp_path {dirpath}/fcgi; uwsgi_temp_path {dirpath}/uwsgi; scgi_temp_path {dirpath}/scgi;
    keepalive_requests 1000000; keepalive_timeout 120s;"""


def upstream_conf(dirpath, port, docroot):
    """The one upstream server type all four paths reach: nginx, 1 worker, static files."""
    return f"""worker_processes 1;
{nginx_common(dirpath)}
http {{
    {nginx_http_common(dirpath)}
    sendfile on; tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {docroot};
        location / {{ }}
    }}
}}
"""


def proxy_conf(dirpath, port, upstream_port):
    return f"""worker_processes {PROXY_WORKERS};
{nginx_common(dirpath)}
http {{
    {nginx_http_common(dirpath)}
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 16 16k; proxy_busy_buffers_size 32k;
        }}
    }}
}}
"""


WORKSPACE_WRAPPER = """#!/bin/sh
# wakeway's workspace command in the benches: the same nginx upstream, on the port wakeway picks.
# One line per start in $STARTS (the thundering-herd count), then exec nginx in the foreground.
# usage: workspace.sh PORT STATE_DIR DOCROOT STARTS_FILE TEMPLATE
port="$1"; state="$2"; docroot="$3"; starts="$4"; template="$5"
echo "start $(date +%s.%N) $$ $port" >> "$starts"
mkdir -p "$state"
sed -e "s|@PORT@|$port|g" -e "s|@DIR@|$state|g" -e "s|@ROOT@|$docroot|g" "$template" > "$state/nginx.conf"
exec @NGINX@ -c "$state/nginx.conf" -g 'daemon off;'
"""


# ---------------------------------------------------------------- processes every bench starts

def write_docroot(tmp):
    """The upstream's two files, /small (100 B) and /large (100 KiB), readable by nginx's worker."""
    docroot = os.path.join(tmp, "www")
    os.makedirs(docroot)
    for name, data in (("small", SMALL), ("large", LARGE)):
        path = os.path.join(docroot, name)
        open(path, "wb").write(data)
        os.chmod(path, 0o644)
    os.chmod(docroot, 0o755)
    return docroot


def start_nginx(dirpath, port, conf):
    """nginx in the foreground with `conf` (written to dirpath/nginx.conf), once it listens on `port`."""
    os.makedirs(dirpath, exist_ok=True)
    path = os.path.join(dirpath, "nginx.conf")
    open(path, "w").write(conf)
    p = spawn([NGINX, "-c", path, "-g", "daemon off;"], os.path.join(dirpath, "log"))
    wait_port(port)
    return p


def nginx_workspace(tmp, docroot, starts):
    """wakeway's workspace command in the benches: the upstream's own nginx config on the port wakeway
    picks (`{port}`, `{state}` filled in by wakeway), one line per start appended to `starts`."""
    template = os.path.join(tmp, "workspace-nginx.conf.in")
    wrapper = os.path.join(tmp, "workspace.sh")
    if not os.path.exists(wrapper):
        open(template, "w").write(upstream_conf("@DIR@", "@PORT@", "@ROOT@"))
        open(wrapper, "w").write(WORKSPACE_WRAPPER.replace("@NGINX@", NGINX))
        os.chmod(wrapper, 0o755)
    return f"exec {wrapper} {{port}} {{state}} {docroot} {starts} {template}"


def start_wakeway(tmp, name, workspace_command, binary=None, env=None):
    """`wakeway serve` with its own data folder (tmp/<name>-data), PROXY_WORKERS threads, quiet logs and the
    rate limits out of the way; `env` adds or overrides WAKEWAY_* variables. Returns (process, port) once it
    listens (start-up loads every session in the store: up to 10 min allowed). Workspaces are not isolated
    here (their upstream is nginx or the testspace on a loopback `{port}`, as for the baselines)."""
    port = free_port()
    full = dict(os.environ, WAKEWAY_LISTEN=f"127.0.0.1:{port}", WAKEWAY_DATA_DIR=os.path.join(tmp, f"{name}-data"),
                WAKEWAY_API_KEY=API_KEY, WAKEWAY_THREADS=str(PROXY_WORKERS), WAKEWAY_LOG="warn",
                WAKEWAY_WORKSPACE_COMMAND=workspace_command, WAKEWAY_RATE_LIMIT_PER_MINUTE="100000",
                WAKEWAY_WAKE_ATTEMPTS_PER_MINUTE="100000", WAKEWAY_STOP_GRACE="5s", WAKEWAY_SHUTDOWN_GRACE="0s")
    if binary is None:
        # Every bench client is 127.0.0.1: the herd and the WebSocket runs open far more than the default 256.
        # (Not for ab.py's other binaries, which may predate these keys: an unknown WAKEWAY_* variable is an
        # error. ab.py passes them to a binary that knows them: NAME=BINARY,WAKEWAY_LOCAL_ISOLATION=off.)
        full["WAKEWAY_MAX_CONNECTIONS_PER_ADDRESS"] = "1000000"
        full["WAKEWAY_LOCAL_ISOLATION"] = "off"
    full.pop("WAKEWAY_CONFIG", None)
    full.update(env or {})
    p = spawn([binary or os.path.join(BIN, "wakeway"), "serve"], os.path.join(tmp, f"{name}.log"), env=full)
    wait_port(port, timeout=600)
    return p, port


def running_session(port, user="bench@example.com"):
    """A session created through the API, once running: (id, its Host header)."""
    sid = api(port, "POST", "/session/create", {"user_id": user})["uuid"]
    wait_state(port, sid, "running")
    return sid, f"vs-code-{sid}.localhost:{port}"


def tally(results, t0):
    """(count per status, ms from t0 to the last answer) of a herd's [(status, perf_counter at answer)]."""
    statuses = {}
    for s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    return statuses, round((max(t for _, t in results) - t0) * 1000, 1)


# ---------------------------------------------------------------- wrk

WRK_LUA = r"""
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"errors\": %d, \"non2xx\": %d, " ..
    "\"p50_us\": %d, \"p99_us\": %d, \"p999_us\": %d, \"mean_us\": %.1f, \"max_us\": %d}\n",
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
"""


def wrk(url, conc, host=None, seconds=None):
    seconds = seconds or DURATION
    threads = 1 if conc < 32 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s", "-s", WRK_SCRIPT]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd.append(url)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON "):])
            d["rps"] = round(d["requests"] / (d["duration_us"] / 1e6), 1)
            d["threads"] = threads
            return d
    raise RuntimeError(f"wrk failed: {r.stdout}\n{r.stderr}")


# ---------------------------------------------------------------- wakeway API

def api(port, method, path, body=None, timeout=120):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def wait_state(port, sid, want, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = api(port, "GET", f"/session/{sid}/status")
        if st.get("state") == want:
            return st
        time.sleep(0.2)
    raise RuntimeError(f"session {sid} not {want} after {timeout}s: {st}")


def first_byte_ms(port, host, path="/small"):
    """Time from sending one request (connection already open) to the first response byte."""
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
    sent_epoch = time.time()
    t0 = time.perf_counter()
    s.sendall(req)
    first = s.recv(1)
    t1 = time.perf_counter()
    rest = first
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    status = rest.split(b"\r\n", 1)[0].decode(errors="replace")
    return (t1 - t0) * 1000, status, sent_epoch


def start_times(path, skip):
    """Epoch seconds of the workspace wrapper's starts (one line each), after the first `skip`."""
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return [float(line.split()[1]) for line in lines[skip:]]


def start_to_listen_ms(command_for_port, n):
    """The workspace's own start time: spawn the same command, poll its port every 0.2 ms."""
    out = []
    for _ in range(n):
        port = free_port()
        popen_epoch = time.time()
        t0 = time.perf_counter()
        p = subprocess.Popen(command_for_port(port), shell=True, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("workspace never listened")
                time.sleep(0.0002)
        out.append(((time.perf_counter() - t0) * 1000, popen_epoch))
        stop(p)
    return out


async def herd(port, host, n):
    """n concurrent requests (one connection each) to one sleeping session."""
    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        w.write(f"GET /small HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode())
        await w.drain()
        data = await r.read()
        w.close()
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "none"

    async def timed():
        try:
            status = await one()
        except Exception as e:  # noqa: BLE001
            status = type(e).__name__
        return status, time.perf_counter()

    t0 = time.perf_counter()
    statuses, last_ms = tally(await asyncio.gather(*(timed() for _ in range(n))), t0)
    return {"requests": n, "statuses": statuses, "served_200": statuses.get("200", 0),
            "time_to_last_response_ms": last_ms}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric_sum_count(port, name, labels=""):
    """(sum, count) of a Prometheus histogram from wakeway's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    vals = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"{name}_{part}{labels} ") or line.startswith(f"{name}_{part}{{{labels}}} "):
                vals[part] = float(line.split()[-1])
    return vals.get("sum", 0.0), vals.get("count", 0.0)


def seeded_wakeway(tmp, name, workspace_command, seed=0):
    """A wakeway whose data folder holds `seed` sleeping sessions (written by wakeway-bench-seed before it
    starts) plus one created through the API and running. Returns (process, port, host, start-up s, seed report)."""
    report = None
    if seed:
        r = subprocess.run([os.path.join(BIN, "wakeway-bench-seed"), os.path.join(tmp, f"{name}-data"), str(seed)],
                           capture_output=True, text=True, timeout=900, check=True)
        report = json.loads(r.stdout.strip().splitlines()[-1])
    t0 = time.monotonic()
    p, port = start_wakeway(tmp, name, workspace_command)
    startup = time.monotonic() - t0
    _, host = running_session(port, f"{name}@example.com")
    return p, port, host, startup, report


def sessions_at_scale(tmp, workspace_command):
    """One wakeway holding a single session vs one holding SESSIONS more (sleeping): start-up, memory per
    session, proxying latency on an awake session (runs alternate between the two), sweep time."""
    one, one_port, one_host, one_start, _ = seeded_wakeway(tmp, "one", workspace_command)
    many, many_port, many_host, many_start, seeded = seeded_wakeway(tmp, "many", workspace_command, seed=SESSIONS)
    time.sleep(2)
    rss_one, rss_many = rss_kib(one.pid), rss_kib(many.pid)
    runs = {"one": [], "many": []}
    for _ in range(2):
        for name, port, host in (("one", one_port, one_host), ("many", many_port, many_host)):
            for conc in (1, 32):
                wrk(f"http://127.0.0.1:{port}/small", conc, host, seconds=1)
                d = wrk(f"http://127.0.0.1:{port}/small", conc, host)
                d["concurrency"] = conc
                runs[name].append(d)
                log(f"scale {name:4} c={conc:<3} {d['rps']:>9.0f} req/s  p50 {d['p50_us']/1000:6.3f} ms  "
                    f"p99 {d['p99_us']/1000:6.3f} ms")

    def med(name, conc, key):
        return statistics.median(d[key] for d in runs[name] if d["concurrency"] == conc)

    sweep = {}
    for name, port in (("one", one_port), ("many", many_port)):
        total, count = metric_sum_count(port, "wakeway_sweep_duration_seconds", 'result="ok"')
        sweep[name] = {"sweeps": int(count), "mean_ms": round(total / count * 1000, 2) if count else None}
    out = {"sessions": SESSIONS, "seed": seeded,
           "startup_s": {"one": round(one_start, 2), "many": round(many_start, 2)},
           "rss_kib": {"one": rss_one, "many": rss_many},
           "bytes_per_session": round((rss_many - rss_one) * 1024 / SESSIONS),
           "sweep": sweep, "runs": runs}
    for conc in (1, 32):
        out[f"c{conc}"] = {
            "rps_one": med("one", conc, "rps"), "rps_many": med("many", conc, "rps"),
            "p50_us_one": med("one", conc, "p50_us"), "p50_us_many": med("many", conc, "p50_us"),
            "p99_us_one": med("one", conc, "p99_us"), "p99_us_many": med("many", conc, "p99_us")}
        c = out[f"c{conc}"]
        c["p50_ratio"] = round(c["p50_us_many"] / max(c["p50_us_one"], 1), 3)
        c["p99_ratio"] = round(c["p99_us_many"] / max(c["p99_us_one"], 1), 3)
        c["rps_ratio"] = round(c["rps_many"] / c["rps_one"], 3)
    stop(many)
    stop(one)
    log(f"scale: {json.dumps({k: v for k, v in out.items() if k != 'runs'})}")
    return out


# ---------------------------------------------------------------- run

def main():
    global WRK_SCRIPT
    started = datetime.datetime.now(datetime.timezone.utc)
    run_t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="wakeway-bench-")
    os.chmod(tmp, 0o755)
    WRK_SCRIPT = os.path.join(tmp, "report.lua")
    open(WRK_SCRIPT, "w").write(WRK_LUA)
    docroot = write_docroot(tmp)

    results = {"started_at": started.isoformat(timespec="seconds"), "mode": MODE,
               "command": "benches/run.sh" + ("" if MODE == "full" else f" --{MODE}"), "machine": machine(),
               "load_avg_start": load_avg(), "tools": tool_versions(),
               "settings": {"duration_s": DURATION, "concurrency": CONCURRENCY, "proxy_workers": PROXY_WORKERS,
                            "wrk_threads": "1 for c<32, else 2", "upstream": "nginx, 1 worker, static files",
                            "small_bytes": len(SMALL), "large_bytes": len(LARGE)}}
    log(f"machine: {results['machine']}  load: {results['load_avg_start']}  mode: {results['mode']}")

    # The upstream (direct target of every baseline), and nginx as reverse proxy.
    up_port, px_port = free_port(), free_port()
    up_dir, px_dir = os.path.join(tmp, "upstream"), os.path.join(tmp, "nginx-proxy")
    start_nginx(up_dir, up_port, upstream_conf(up_dir, up_port, docroot))
    start_nginx(px_dir, px_port, proxy_conf(px_dir, px_port, up_port))

    # configurable-http-proxy.
    chp_port, chp_api = free_port(), free_port()
    spawn([CHP, "--ip", "127.0.0.1", "--port", str(chp_port), "--api-ip", "127.0.0.1", "--api-port", str(chp_api),
           "--default-target", f"http://127.0.0.1:{up_port}", "--log-level", "error"], os.path.join(tmp, "chp.log"),
          env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN="bench"))
    wait_port(chp_port)

    # Caddy and HAProxy, one core each (benches/baselines.py).
    caddy_port, haproxy_port = free_port(), free_port()
    caddy_argv, caddy_env = baselines.caddy(tmp, caddy_port, up_port)
    spawn(caddy_argv, os.path.join(tmp, "caddy.log"), env=caddy_env)
    spawn(baselines.haproxy(tmp, haproxy_port, up_port), os.path.join(tmp, "haproxy.log"))
    wait_port(caddy_port)
    wait_port(haproxy_port)

    # The same certificate for wakeway's TLS listener and nginx's (benches/h2tls.py).
    cert, key = h2tls.make_cert(tmp)
    ng_tls_port, ng_h2c_port, ww_tls_port = free_port(), free_port(), free_port()
    tls_dir = os.path.join(tmp, "nginx-tls")
    start_nginx(tls_dir, ng_tls_port, h2tls.nginx_tls_proxy_conf(
        nginx_common(tls_dir), nginx_http_common(tls_dir), ng_tls_port, ng_h2c_port, up_port, cert, key,
        PROXY_WORKERS))

    # wakeway, whose workspace is the same nginx upstream config on a port wakeway picks.
    starts = os.path.join(tmp, "starts")
    ww, ww_port = start_wakeway(tmp, "wakeway", nginx_workspace(tmp, docroot, starts),
                                env={"WAKEWAY_TLS_LISTEN": f"127.0.0.1:{ww_tls_port}", "WAKEWAY_TLS_CERT_FILE": cert,
                                     "WAKEWAY_TLS_KEY_FILE": key})
    wait_port(ww_tls_port)
    sid, host = running_session(ww_port)
    log(f"upstream :{up_port}  nginx :{px_port}  chp :{chp_port}  caddy :{caddy_port}  haproxy :{haproxy_port}  "
        f"wakeway :{ww_port} (TLS :{ww_tls_port}) session {sid}")

    targets = [("direct", up_port, None), ("nginx", px_port, None), ("chp", chp_port, None),
               ("caddy", caddy_port, None), ("haproxy", haproxy_port, None), ("wakeway", ww_port, host)]

    # 1 + 2: keep-alive proxying.
    rows = []
    for size in ("small", "large"):
        for conc in CONCURRENCY:
            for name, port, h in targets:
                wrk(f"http://127.0.0.1:{port}/{size}", conc, h, seconds=1)  # warm connections and pools
                d = wrk(f"http://127.0.0.1:{port}/{size}", conc, h)
                d.update(target=name, size=size, concurrency=conc)
                rows.append(d)
                log(f"{size:5} c={conc:<3} {name:8} {d['rps']:>9.0f} req/s  p50 {d['p50_us']/1000:7.2f} ms  "
                    f"p99 {d['p99_us']/1000:7.2f} ms  p99.9 {d['p999_us']/1000:7.2f} ms  errors {d['errors']}")
    by = {(r["target"], r["size"], r["concurrency"]): r for r in rows}
    for r in rows:
        base = by[("direct", r["size"], r["concurrency"])]
        ng = by[("nginx", r["size"], r["concurrency"])]
        chp = by[("chp", r["size"], r["concurrency"])]
        caddy = by[("caddy", r["size"], r["concurrency"])]
        r["rps_vs_caddy"] = round(r["rps"] / caddy["rps"], 3)
        r["rps_vs_direct"] = round(r["rps"] / base["rps"], 3)
        r["rps_vs_nginx"] = round(r["rps"] / ng["rps"], 3)
        r["rps_vs_chp"] = round(r["rps"] / chp["rps"], 2)
        r["p99_vs_nginx"] = round(r["p99_us"] / max(ng["p99_us"], 1), 2)
    results["proxying"] = rows
    added = {}
    for size in ("small", "large"):
        w, d = by[("wakeway", size, 1)], by[("direct", size, 1)]
        n = by[("nginx", size, 1)]
        added[size] = {"p50_ms": round((w["p50_us"] - d["p50_us"]) / 1000, 3),
                       "p99_ms": round((w["p99_us"] - d["p99_us"]) / 1000, 3),
                       "nginx_p50_ms": round((n["p50_us"] - d["p50_us"]) / 1000, 3),
                       "nginx_p99_ms": round((n["p99_us"] - d["p99_us"]) / 1000, 3)}
    results["added_latency_c1"] = added

    # HTTP/2 (h2 over TLS, h2c) and TLS handshakes, wakeway vs nginx with the same certificate and cipher suite.
    # wakeway's h2c is prior knowledge on its plain listener (HttpServerOptions.h2c, src/main.rs).
    results["h2tls"] = h2tls.run([("nginx", ng_tls_port, ng_h2c_port, "localhost"),
                                  ("wakeway", ww_tls_port, ww_port, host.split(":")[0])], DURATION, log)

    # Memory of the proxies after the load (RSS, all processes of the proxy).
    results["rss_after_load_kib"] = {"wakeway": rss_kib(ww.pid)}

    # 3: wake overhead.
    solo_command = nginx_workspace(tmp, docroot, f"{tmp}/solo-starts")
    solo = start_to_listen_ms(
        lambda port: solo_command.replace("{port}", str(port)).replace("{state}", f"{tmp}/solo-{port}"), WAKES)
    own = [ms for ms, _ in solo]
    solo_spawn = [(w - e) * 1000 for (_, e), w in zip(solo, start_times(f"{tmp}/solo-starts", 0))]
    wakes, sent = [], []
    starts_before = len(start_times(starts, 0))
    for _ in range(WAKES):
        api(ww_port, "POST", f"/session/{sid}/sleep")
        wait_state(ww_port, sid, "sleeping")
        time.sleep(0.2)
        ms, status, sent_epoch = first_byte_ms(ww_port, host)
        if not status.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"wake answered {status}")
        wakes.append(ms)
        sent.append(sent_epoch)
    wake_starts = start_times(starts, starts_before)
    wake_spawn = [(w - e) * 1000 for e, w in zip(sent, wake_starts)]
    own_med, wake_med = statistics.median(own), statistics.median(wakes)
    results["wake"] = {"n": WAKES, "first_byte_ms": [round(x, 2) for x in wakes],
                       "workspace_start_to_listen_ms": [round(x, 2) for x in own],
                       "median_first_byte_ms": round(wake_med, 2), "median_start_to_listen_ms": round(own_med, 2),
                       "median_overhead_ms": round(wake_med - own_med, 2),
                       "workspace_starts_during_wakes": len(wake_starts),
                       "wake_request_to_wrapper_start_ms": round(statistics.median(wake_spawn), 2) if wake_spawn else None,
                       "solo_spawn_to_wrapper_start_ms": round(statistics.median(solo_spawn), 2) if solo_spawn else None,
                       "wake_wrapper_start_to_first_byte_ms":
                           round(statistics.median([w - s for w, s in zip(wakes, wake_spawn)]), 2) if wake_spawn else None,
                       "solo_wrapper_start_to_listen_ms":
                           round(statistics.median([o - s for o, s in zip(own, solo_spawn)]), 2) if solo_spawn else None}
    log(f"wake: first byte median {wake_med:.1f} ms, workspace alone {own_med:.1f} ms, "
        f"overhead {wake_med - own_med:.1f} ms")

    # 4: thundering herd.
    api(ww_port, "POST", f"/session/{sid}/sleep")
    wait_state(ww_port, sid, "sleeping")
    before = len(open(starts).read().splitlines())
    h = asyncio.run(herd(ww_port, host, HERD))
    time.sleep(0.5)
    h["workspace_starts"] = len(open(starts).read().splitlines()) - before
    results["herd"] = h
    log(f"herd: {h}")

    # 6: sessions at scale (two more wakeways, their own data folders; the same workspace command).
    results["scale"] = sessions_at_scale(tmp, nginx_workspace(tmp, docroot, f"{tmp}/scale-starts"))

    # 7: activity classifier throughput (a separate Rust program, no network).
    try:
        messages = {"full": "20000", "quick": "5000", "smoke": "500"}[MODE]
        r = subprocess.run([os.path.join(BIN, "wakeway-bench-activity"), messages], capture_output=True, text=True,
                           timeout=600, check=True)
        results["activity"] = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        log(f"activity: {results['activity']}")
    except Exception as e:  # noqa: BLE001
        if MODE == "smoke":
            raise
        results["activity"] = []
        log(f"activity bench failed: {e}")

    # 5: idle proxied WebSockets (benches/websockets.py: its own processes, testspace as the upstream).
    try:
        ws_out = os.path.join(HERE, "results", "websockets.json" if MODE == "full" else f"websockets-{MODE}.json")
        n_ws = {"full": "10000", "quick": "1000", "smoke": "200"}[MODE]
        subprocess.run([sys.executable, os.path.join(HERE, "websockets.py"), n_ws, ws_out, str(HERD)],
                       capture_output=True, text=True, timeout=900, check=True)
        ws = json.load(open(ws_out))
        results["websockets"], results["ws_herd"] = ws["runs"], ws.get("herd")
        log(f"websockets: {results['websockets']} herd: {results['ws_herd']}")
    except Exception as e:  # noqa: BLE001
        if MODE == "smoke":
            raise
        results["websockets"] = []
        log(f"websockets bench failed: {e}")

    results["load_avg_end"] = load_avg()
    results["duration_s"] = round(time.monotonic() - run_t0, 1)
    for p in reversed(procs):
        stop(p)
    # wakeway stops its workspaces on exit; stop any workspace nginx still left, by its own pid.
    for f in (starts, os.path.join(tmp, "solo-starts"), os.path.join(tmp, "scale-starts")):
        for line in open(f).read().splitlines() if os.path.exists(f) else []:
            try:
                os.killpg(int(line.split()[2]), signal.SIGTERM)
            except (ProcessLookupError, PermissionError, ValueError, IndexError):
                pass
    shutil.rmtree(tmp, ignore_errors=True)

    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    stem = "latest" if MODE == "full" else MODE
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = render_md(results)
    open(os.path.join(out_dir, f"{stem}.md"), "w").write(md)
    svg_name = "bench-latency.svg" if MODE == "full" else f"bench-latency-{MODE}.svg"
    svg_dir = os.path.join(ROOT, "docs") if MODE == "full" else out_dir
    open(os.path.join(svg_dir, svg_name), "w").write(render_svg(results))
    log(md)
    log(f"wrote benches/results/{stem}.json, {stem}.md and {os.path.relpath(svg_dir, ROOT)}/{svg_name} "
        f"in {results['duration_s']} s")
    if MODE == "full":
        update_readme(md)
    if MODE == "smoke":
        smoke_check(results)


def update_readme(md):
    """Put the tables and the summary of a full run into the README, between its bench markers."""
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    begin, end = "<!-- bench:begin (written by benches/run.sh) -->", "<!-- bench:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        open(path, "w").write(head + begin + "\n" + md + end + rest.split(end, 1)[1])
        log("updated the Performance section of README.md")


def smoke_check(r):
    """The smoke run (CI) checks that every step still works and counts right; never a speed."""
    problems = []
    for x in r["proxying"]:
        if x["errors"] or x["requests"] == 0:
            problems.append(f"proxying {x['target']} {x['size']} c={x['concurrency']}: {x['errors']} errors, "
                            f"{x['requests']} requests")
    h, wh, sc = r["herd"], r.get("ws_herd") or {}, r.get("scale") or {}
    if h["workspace_starts"] != 1 or h["served_200"] != h["requests"]:
        problems.append(f"herd: {h}")
    if wh.get("workspace_starts") != 1 or wh.get("switched_101") != wh.get("upgrades"):
        problems.append(f"WebSocket herd: {wh}")
    if r["wake"]["workspace_starts_during_wakes"] != r["wake"]["n"]:
        problems.append(f"wakes: {r['wake']}")
    if not sc or sc["sweep"]["many"]["sweeps"] < 1 or sc["seed"]["sessions"] != SESSIONS:
        problems.append(f"sessions at scale: {({k: v for k, v in sc.items() if k != 'runs'})}")
    problems += h2tls.smoke_problems(r["h2tls"])
    if len(r.get("websockets") or []) != 3 or not r.get("activity"):
        problems.append("the WebSocket or classifier step produced nothing")
    if problems:
        log("SMOKE FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    log("smoke: every bench step ran and counted right")


def render_summary(r):
    """What the run says against the goals of the benches issue, in words (written from the figures)."""
    rows = [x for x in r["proxying"] if x["target"] == "wakeway"]
    vs_nginx = [x["rps_vs_nginx"] for x in rows]
    vs_chp = [x["rps_vs_chp"] for x in rows]
    ok = [x for x in rows if x["rps_vs_nginx"] >= 0.6 and x["p99_vs_nginx"] <= 2.0]
    missed = [f"{x['size']} c={x['concurrency']}: {x['rps_vs_nginx']:.2f}×, p99 {x['p99_vs_nginx']:.2f}×"
              for x in rows if x not in ok]
    a, w, h = r["added_latency_c1"], r["wake"], r["herd"]
    out = [f"What this run says: wakeway proxies at {min(vs_nginx):.2f}–{max(vs_nginx):.2f}× nginx's requests/s on "
           f"the same single core and {min(vs_chp):.1f}–{max(vs_chp):.1f}× configurable-http-proxy, adding "
           f"{a['small']['p50_ms']:.3f} ms (100 B) / {a['large']['p50_ms']:.3f} ms (100 KiB) to the p50 of a direct "
           f"connection at c=1 (nginx adds {a['small']['nginx_p50_ms']:.3f} / {a['large']['nginx_p50_ms']:.3f} ms). "
           f"Goal ≥ 0.6× nginx with p99 ≤ 2× nginx's: met at {len(ok)} of {len(rows)} points"
           + (f" (not {'; '.join(missed)})" if missed else "") + ". "
           f"Goal ≥ 6× configurable-http-proxy: met at {sum(v >= 6 for v in vs_chp)} of {len(vs_chp)} points. "
           + summary_caddy_h2tls(r),
           f"A wake costs {w['median_overhead_ms']:.1f} ms (median of {w['n']}) on top of the workspace's own "
           f"start-to-listening time (goal ≤ 25 ms). {h['requests']:,} concurrent requests to a sleeping session started "
           f"it {h['workspace_starts']} time(s); {h['served_200']:,} answered 200, the last after "
           f"{h['time_to_last_response_ms'] / 1000:.2f} s."]
    wh = r.get("ws_herd")
    if wh:
        out.append(f"{wh['upgrades']:,} concurrent WebSocket upgrades to a sleeping session started it "
                   f"{wh['workspace_starts']} time(s); {wh['switched_101']:,} switched protocols, the last after "
                   f"{wh['time_to_last_101_ms'] / 1000:.2f} s.")
    ws = {x["target"]: x for x in r.get("websockets") or []}
    if {"nginx", "wakeway", "direct"} <= ws.keys():
        n, wk, d = ws["nginx"], ws["wakeway"], ws["direct"]
        out.append(f"With {wk['connections']:,} idle WebSockets open, wakeway holds {wk['kib_per_connection']:.0f} KiB "
                   f"per connection vs nginx's {n['kib_per_connection']:.0f} KiB; a message's round trip through "
                   f"wakeway is {wk['echo_p50_ms']:.3f} ms p50 / {wk['echo_p99_ms']:.3f} ms p99 vs "
                   f"{d['echo_p50_ms']:.3f} / {d['echo_p99_ms']:.3f} ms direct and {n['echo_p50_ms']:.3f} / "
                   f"{n['echo_p99_ms']:.3f} ms through nginx.")
    sc = r.get("scale")
    if sc:
        c1, c32 = sc["c1"], sc["c32"]
        out.append(f"With {sc['sessions']:,} sessions registered, requests to an awake one take {c1['p50_ratio']:.2f}× "
                   f"(p50, c=1) and {c32['p99_ratio']:.2f}× (p99, c=32) the time they take with 1 session (goal "
                   f"≤ 1.05×), at {c32['rps_ratio']:.2f}× the requests/s; a sweep over all of them takes "
                   f"{sc['sweep']['many']['mean_ms']} ms; each registered session costs {sc['bytes_per_session']:,} B "
                   f"of memory; start-up {sc['startup_s']['many']} s.")
    return "\n\n".join(out) + "\n"


def summary_caddy_h2tls(r):
    """The sentence on Caddy and HAProxy, and the one on HTTP/2 and TLS (goal: ≥ 0.7× nginx)."""
    rows = [x for x in r["proxying"] if x["target"] == "wakeway"]
    by = {(x["target"], x["size"], x["concurrency"]): x for x in r["proxying"]}
    vs_caddy = [x["rps_vs_caddy"] for x in rows]
    vs_haproxy = [x["rps"] / by[("haproxy", x["size"], x["concurrency"])]["rps"] for x in rows]
    out = (f"Against Caddy: {min(vs_caddy):.2f}–{max(vs_caddy):.2f}× its requests/s, ahead at "
           f"{sum(v > 1 for v in vs_caddy)} of {len(vs_caddy)} points; against HAProxy "
           f"{min(vs_haproxy):.2f}–{max(vs_haproxy):.2f}×.")
    ht = r["h2tls"]
    h2 = [x["rps_vs_nginx"] for x in ht["h2"] if x["target"] == "wakeway" and x["rps_vs_nginx"] is not None]
    hs = {s["kind"]: s["per_s_vs_nginx"] for s in ht["handshakes"] if s["target"] == "wakeway"}
    if h2 and hs:
        out += (f" HTTP/2 (h2 and h2c): {min(h2):.2f}–{max(h2):.2f}× nginx's requests/s; TLS 1.3 handshakes "
                f"{hs.get('full', 0):.2f}× (full) and {hs.get('resumed', 0):.2f}× (resumed) nginx's per second, "
                f"same certificate and {ht['cipher']}; goal ≥ 0.7× met at "
                f"{sum(v >= 0.7 for v in h2) + sum(v >= 0.7 for v in hs.values())} of {len(h2) + len(hs)}.")
    return out


def render_md(r):
    m = r["machine"]
    lines = [f"Run {r['started_at']} · `{r['command']}` · {m['nproc']} cores, {m['cpu']} · load average "
             f"{' '.join(r['load_avg_start'])} at start, {' '.join(r['load_avg_end'])} at end · "
             f"{r['settings']['duration_s']} s per point, nginx proxy {r['settings']['proxy_workers']} worker = "
             f"wakeway {r['settings']['proxy_workers']} thread, upstream nginx (1 worker), wrk -t1 (c=1) / -t2.",
             "",
             "| size | conc | target | req/s | p50 ms | p99 ms | p99.9 ms | ×direct | ×nginx | ×chp | ×caddy | "
             "p99 ×nginx |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["proxying"]:
        lines.append(f"| {x['size']} | {x['concurrency']} | {x['target']} | {x['rps']:.0f} | {x['p50_us']/1000:.2f} | "
                     f"{x['p99_us']/1000:.2f} | {x['p999_us']/1000:.2f} | {x['rps_vs_direct']:.2f} | "
                     f"{x['rps_vs_nginx']:.2f} | {x['rps_vs_chp']:.1f} | {x['rps_vs_caddy']:.2f} | "
                     f"{x['p99_vs_nginx']:.2f} |"
                     + (f" ({x['errors']} errors)" if x["errors"] else ""))
    a = r["added_latency_c1"]
    lines += ["", "| added latency at c=1 (minus direct) | p50 ms | p99 ms |", "|---|---:|---:|"]
    for size in ("small", "large"):
        lines.append(f"| wakeway, {size} | {a[size]['p50_ms']:.3f} | {a[size]['p99_ms']:.3f} |")
        lines.append(f"| nginx, {size} | {a[size]['nginx_p50_ms']:.3f} | {a[size]['nginx_p99_ms']:.3f} |")
    lines += ["", h2tls.render_md(r["h2tls"]).rstrip("\n")]
    w, h = r["wake"], r["herd"]
    lines += ["", "| wake and herd | value |", "|---|---:|",
              f"| wake: first request → first byte, median of {w['n']} | {w['median_first_byte_ms']:.1f} ms |",
              f"| workspace (nginx) alone: start → listening, median of {w['n']} | "
              f"{w['median_start_to_listen_ms']:.1f} ms |",
              f"| **wake overhead** (difference of medians) | **{w['median_overhead_ms']:.1f} ms** |",
              f"| workspace starts during the {w['n']} wakes | {w['workspace_starts_during_wakes']} |",
              f"| wake: request sent → wrapper script running (wakeway's part before the start) | "
              f"{w['wake_request_to_wrapper_start_ms']} ms |",
              f"| wake: wrapper running → first byte | {w['wake_wrapper_start_to_first_byte_ms']} ms |",
              f"| alone: harness spawn → wrapper running | {w['solo_spawn_to_wrapper_start_ms']} ms |",
              f"| alone: wrapper running → listening | {w['solo_wrapper_start_to_listen_ms']} ms |",
              f"| herd: {h['requests']} concurrent requests to a sleeping session: workspace starts | "
              f"{h['workspace_starts']} |",
              f"| herd: answered 200 | {h['served_200']} / {h['requests']} |",
              f"| herd: time to last response | {h['time_to_last_response_ms']:.0f} ms |"]
    wh = r.get("ws_herd")
    if wh:
        lines += [f"| WebSocket herd: {wh['upgrades']} concurrent upgrades to a sleeping session: workspace starts | "
                  f"{wh['workspace_starts']} |",
                  f"| WebSocket herd: switched (101) | {wh['switched_101']} / {wh['upgrades']} |",
                  f"| WebSocket herd: time to last 101 | {wh['time_to_last_101_ms']:.0f} ms |"]
    sc = r.get("scale")
    if sc:
        lines += ["", f"| sessions at scale: {sc['sessions']:,} registered (sleeping) vs 1 | 1 session | "
                  f"{sc['sessions']:,} + 1 | ratio |", "|---|---:|---:|---:|"]
        for conc in (1, 32):
            c = sc[f"c{conc}"]
            lines.append(f"| c={conc}: p50 latency ms | {c['p50_us_one']/1000:.3f} | {c['p50_us_many']/1000:.3f} | "
                         f"{c['p50_ratio']:.3f} |")
            lines.append(f"| c={conc}: p99 latency ms | {c['p99_us_one']/1000:.3f} | {c['p99_us_many']/1000:.3f} | "
                         f"{c['p99_ratio']:.3f} |")
            lines.append(f"| c={conc}: req/s | {c['rps_one']:.0f} | {c['rps_many']:.0f} | {c['rps_ratio']:.3f} |")
        sw = sc["sweep"]
        lines += [f"| sweep over every session, mean ms (sweeps seen) | {sw['one']['mean_ms']} ({sw['one']['sweeps']}) | "
                  f"{sw['many']['mean_ms']} ({sw['many']['sweeps']}) | |",
                  f"| start-up (process → listening) s | {sc['startup_s']['one']} | {sc['startup_s']['many']} | |",
                  f"| RSS MiB | {sc['rss_kib']['one'] / 1024:.1f} | {sc['rss_kib']['many'] / 1024:.1f} | |",
                  f"| **memory per registered session** | | **{sc['bytes_per_session']} B** | |"]
    if r.get("websockets"):
        lines += ["", "| idle WebSockets (testspace echo upstream) | open | KiB per connection (RSS) | "
                  "echo p50 ms | echo p99 ms |", "|---|---:|---:|---:|---:|"]
        for x in r["websockets"]:
            who = {"direct": "upstream itself (direct)", "nginx": "nginx (master + worker)",
                   "wakeway": "wakeway (its process only)"}[x["target"]]
            lines.append(f"| {who} | {x['connections']} | {x['kib_per_connection']:.1f} | {x['echo_p50_ms']:.3f} | "
                         f"{x['echo_p99_ms']:.3f} |")
    if r.get("activity"):
        lines += ["", "| activity classifier (one core) | message size | wire MB/s | payload MB/s |",
                  "|---|---:|---:|---:|"]
        for a in r["activity"]:
            kind = "permessage-deflate" if a["deflate"] else "uncompressed"
            lines.append(f"| {kind} | {a['message_bytes']} B | {a['wire_mb_per_s']:.0f} | "
                         f"{a['payload_mb_per_s']:.0f} |")
    return "\n".join(lines) + "\n\n" + render_summary(r)


def render_svg(r):
    """Grouped bars, log scale: p50 / p99 / p99.9 per target, small responses, each concurrency."""
    targets = ["direct", "nginx", "chp", "caddy", "haproxy", "wakeway"]
    colors = {"direct": "#7f7f7f", "nginx": "#2ca02c", "chp": "#ff7f0e", "caddy": "#9467bd", "haproxy": "#8c564b",
              "wakeway": "#1f77b4"}
    by = {(x["target"], x["size"], x["concurrency"]): x for x in r["proxying"]}
    groups = [(size, c, p) for size in ("small", "large") for c in r["settings"]["concurrency"]
              for p in ("p50_us", "p99_us", "p999_us")]
    import math
    vals = [by[(t, s, c)][p] / 1000 for (s, c, p) in groups for t in targets]
    lo = 10 ** math.floor(math.log10(max(min(vals), 0.01)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    W, H, L, B, T = 60 + len(groups) * 74, 380, 60, 60, 40
    ph = H - B - T

    def y(v):
        return T + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W + 20}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{L}" y="20" font-size="14">wakeway vs nginx, configurable-http-proxy, Caddy, HAProxy and direct: '
           f'latency (ms, log scale), HTTP/1.1 keep-alive, {r["started_at"]}</text>']
    d = lo
    while d <= hi * 1.0001:
        out.append(f'<line x1="{L}" x2="{W}" y1="{y(d):.1f}" y2="{y(d):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 5}" y="{y(d) + 4:.1f}" text-anchor="end">{d:g}</text>')
        d *= 10
    for gi, (s, c, p) in enumerate(groups):
        x0 = L + 6 + gi * 74
        for ti, t in enumerate(targets):
            v = by[(t, s, c)][p] / 1000
            out.append(f'<rect x="{x0 + ti * 11}" y="{y(v):.1f}" width="10" height="{T + ph - y(v):.1f}" '
                       f'fill="{colors[t]}"><title>{t} {s} c={c} {p[:-3]} {v:.2f} ms</title></rect>')
        label = {"p50_us": "p50", "p99_us": "p99", "p999_us": "p99.9"}[p]
        out.append(f'<text x="{x0 + 33}" y="{T + ph + 14}" text-anchor="middle">{label}</text>')
        if p == "p50_us":
            out.append(f'<text x="{x0 + 107}" y="{T + ph + 30}" text-anchor="middle">{s} c={c}</text>')
    for ti, t in enumerate(targets):
        out.append(f'<rect x="{L + ti * 90}" y="{H - 18}" width="10" height="10" fill="{colors[t]}"/>'
                   f'<text x="{L + 14 + ti * 90}" y="{H - 9}">{t}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                stop(p)
