#!/usr/bin/env python3
"""Proxied WebSockets: RSS per idle connection of wakeway vs nginx, echo round-trip with them all open, and a
herd of WebSocket upgrades to a sleeping session.

Run after benches/run.sh has built everything: `python3 benches/websockets.py [N [OUT.json [HERD]]]` (default
N = as many as the fd limit allows, up to 10,000; HERD = 1000; output benches/results/websockets.json). A proxy
holds two descriptors per proxied socket, so N is capped at (hard fd limit - 500) / 2: 9,750 under the 20,000
limit of these machines. Upstream for every path: wakeway-testspace's `/ws` echo server.
"""

import asyncio
import base64
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

import bench


FD_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
FD_CAP = 10_000 if FD_HARD == resource.RLIM_INFINITY else min(10_000, (FD_HARD - 500) // 2)
ARGS = sys.argv[1:] if __name__ == "__main__" else []  # ab.py imports this module with its own arguments
N = min(int(ARGS[0]), FD_CAP) if len(ARGS) > 0 else FD_CAP
OUT = ARGS[1] if len(ARGS) > 1 else os.path.join(bench.HERE, "results", "websockets.json")
HERD = int(ARGS[2]) if len(ARGS) > 2 else 1000
TESTSPACE = os.path.join(bench.BIN, "wakeway-testspace")


def rss_tree_kib(pid):
    """RSS of a process and its children (nginx master + workers)."""
    total = bench.rss_kib(pid)
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in open(f"/proc/{pid}/task/{task}/children").read().split():
                total += rss_tree_kib(int(child))
    except OSError:
        pass
    return total


async def open_ws(port, host):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:80])
    return r, w


async def echo_ms(r, w, n=200):
    out = []
    for _ in range(n):
        payload = b"ping-0123456789"
        mask = os.urandom(4)
        t0 = time.perf_counter()
        w.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)))
        await w.drain()
        hdr = await r.readexactly(2)
        await r.readexactly(hdr[1] & 0x7F)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure(name, port, host, pid, tree, n=N):
    rss = rss_tree_kib if tree else bench.rss_kib
    before = rss(pid)
    conns = []
    for i in range(0, n, 200):
        conns += await asyncio.gather(*(open_ws(port, host) for _ in range(min(200, n - i))))
    await asyncio.sleep(2)
    after = rss(pid)
    r, w = await open_ws(port, host)
    rtt = await echo_ms(r, w)
    for _, cw in conns + [(r, w)]:
        cw.close()
    res = {"target": name, "connections": n, "rss_before_kib": before, "rss_after_kib": after,
           "kib_per_connection": round((after - before) / n, 2), "echo_p50_ms": round(statistics.median(rtt), 3),
           "echo_p99_ms": round(sorted(rtt)[int(len(rtt) * 0.99) - 1], 3)}
    print(res, flush=True)
    return res


async def ws_herd(port, host, n):
    """n concurrent WebSocket upgrades (one connection each) to one sleeping session."""
    async def timed():
        try:
            r, w = await open_ws(port, host)
            w.close()
            status = "101"
        except Exception as e:  # noqa: BLE001
            status = str(e)[:40]
        return status, time.perf_counter()

    t0 = time.perf_counter()
    statuses, last_ms = bench.tally(await asyncio.gather(*(timed() for _ in range(n))), t0)
    return {"upgrades": n, "statuses": statuses, "switched_101": statuses.get("101", 0), "time_to_last_101_ms": last_ms}


def start_nginx_ws(px_dir, ts_port):
    """nginx (1 worker) passing WebSocket upgrades on to the testspace: (process, port)."""
    px_port = bench.free_port()
    conf = bench.proxy_conf(px_dir, px_port, ts_port).replace(
        'proxy_set_header Connection "";',
        'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 1h;')
    return bench.start_nginx(px_dir, px_port, conf), px_port


def start_wakeway_ws(tmp, name, starts, sockets, binary=None, extra_env=None):
    """wakeway (1 thread) whose workspace is a testspace, allowing `sockets` WebSockets: (process, port)."""
    env = {"WAKEWAY_THREADS": "1", "WAKEWAY_MAX_WEBSOCKETS_PER_SESSION": str(sockets + 10),
           "WAKEWAY_MAX_CONNECTIONS_PER_ADDRESS": "1000000", **(extra_env or {})}
    return bench.start_wakeway(tmp, name, f"exec {TESTSPACE} --port {{port}} --starts {starts} {{workspace}}",
                               binary=binary, env=env)


def ab(variants, rounds, n):
    """ab.py --websockets: RSS per idle WebSocket of nginx and each NAME=BINARY variant, every one started
    afresh in every round (in a new random order), medians printed last."""
    n = min(n, FD_CAP)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_HARD, FD_HARD))
    tmp = tempfile.mkdtemp(prefix="wakeway-ws-ab-")
    os.chmod(tmp, 0o755)
    ts_port = bench.free_port()
    bench.spawn([TESTSPACE, "--port", str(ts_port), tmp], os.path.join(tmp, "testspace.log"))
    bench.wait_port(ts_port)
    names = ["nginx"] + [v.split("=", 1)[0] for v in variants]
    specs = {v.split("=", 1)[0]: v.split("=", 1)[1].split(",") for v in variants}  # NAME: [BINARY, ENV=VALUE...]
    got = {name: [] for name in names}
    try:
        for r in range(rounds):
            for name in random.sample(names, len(names)):
                d = os.path.join(tmp, f"{name}-{r}")
                if name == "nginx":
                    p, port = start_nginx_ws(d, ts_port)
                    host, tree = "x", True
                else:
                    os.makedirs(d)
                    binary, *envs = specs[name]
                    p, port = start_wakeway_ws(d, name, os.path.join(tmp, "starts"), n, os.path.abspath(binary),
                                               dict(e.split("=", 1) for e in envs))
                    _, host = bench.running_session(port, "ws@example.com")
                    tree = False
                res = asyncio.run(measure(name, port, host, p.pid, tree, n))
                got[name].append(res["kib_per_connection"])
                bench.stop(p)
                time.sleep(1)
        print(f"\nload average {bench.load_avg()}; {n} idle WebSockets, medians of {rounds} rounds")
        print("| target | KiB per idle WebSocket (rounds) | median | ×nginx |\n|---|---|---:|---:|")
        med = {name: statistics.median(v) for name, v in got.items()}
        for name in names:
            print(f"| {name} | {' / '.join(f'{x:.1f}' for x in got[name])} | {med[name]:.1f} | "
                  f"{med[name] / med['nginx']:.2f} |")
    finally:
        for p in reversed(bench.procs):
            if p.poll() is None:
                bench.stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    tmp = tempfile.mkdtemp(prefix="wakeway-ws-")
    os.chmod(tmp, 0o755)
    ts_port = bench.free_port()
    bench.spawn([TESTSPACE, "--port", str(ts_port), tmp], os.path.join(tmp, "testspace.log"))
    bench.wait_port(ts_port)
    ng, px_port = start_nginx_ws(os.path.join(tmp, "nginx-proxy"), ts_port)
    starts = os.path.join(tmp, "starts")
    ww, ww_port = start_wakeway_ws(tmp, "wakeway", starts, max(N, HERD))
    sid, host = bench.running_session(ww_port, "ws@example.com")
    try:
        results = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_avg": bench.load_avg(),
                   "machine": bench.machine(), "runs": []}
        # RSS: the testspace process (direct: the upstream's own cost), nginx master + workers, the wakeway
        # process alone (not its child workspace).
        for name, port, h, pid, tree in [("direct", ts_port, "127.0.0.1", bench.procs[0].pid, False),
                                         ("nginx", px_port, "x", ng.pid, True), ("wakeway", ww_port, host, ww.pid, False)]:
            results["runs"].append(asyncio.run(measure(name, port, h, pid, tree)))
        # The herd: every upgrade is held until the one start answers, then proxied.
        bench.api(ww_port, "POST", f"/session/{sid}/sleep")
        bench.wait_state(ww_port, sid, "sleeping")
        before = len(open(starts).read().splitlines())
        herd = asyncio.run(ws_herd(ww_port, host, HERD))
        time.sleep(0.5)
        herd["workspace_starts"] = len(open(starts).read().splitlines()) - before
        print(herd, flush=True)
        results["herd"] = herd
        results["load_avg_end"] = bench.load_avg()
        json.dump(results, open(OUT, "w"), indent=2)
        print(f"wrote {OUT}")
    finally:
        for p in reversed(bench.procs):
            bench.stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:  # also when a start fails before main's own cleanup
        for p in reversed(bench.procs):
            if p.poll() is None:
                bench.stop(p)
