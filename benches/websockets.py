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
import resource
import shutil
import statistics
import sys
import tempfile
import time

import bench


FD_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
FD_CAP = 10_000 if FD_HARD == resource.RLIM_INFINITY else min(10_000, (FD_HARD - 500) // 2)
N = min(int(sys.argv[1]), FD_CAP) if len(sys.argv) > 1 else FD_CAP
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(bench.HERE, "results", "websockets.json")
HERD = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
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


async def measure(name, port, host, pid, tree):
    rss = rss_tree_kib if tree else bench.rss_kib
    before = rss(pid)
    conns = []
    for i in range(0, N, 200):
        conns += await asyncio.gather(*(open_ws(port, host) for _ in range(min(200, N - i))))
    await asyncio.sleep(2)
    after = rss(pid)
    r, w = await open_ws(port, host)
    rtt = await echo_ms(r, w)
    for _, cw in conns + [(r, w)]:
        cw.close()
    res = {"target": name, "connections": N, "rss_before_kib": before, "rss_after_kib": after,
           "kib_per_connection": round((after - before) / N, 2), "echo_p50_ms": round(statistics.median(rtt), 3),
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


def main():
    tmp = tempfile.mkdtemp(prefix="wakeway-ws-")
    os.chmod(tmp, 0o755)
    ts_port = bench.free_port()
    bench.spawn([TESTSPACE, "--port", str(ts_port), tmp], os.path.join(tmp, "testspace.log"))
    bench.wait_port(ts_port)
    px_port = bench.free_port()
    px_dir = os.path.join(tmp, "nginx-proxy")
    conf = bench.proxy_conf(px_dir, px_port, ts_port).replace(
        'proxy_set_header Connection "";',
        'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 1h;')
    ng = bench.start_nginx(px_dir, px_port, conf)
    starts = os.path.join(tmp, "starts")
    ww, ww_port = bench.start_wakeway(
        tmp, "wakeway", f"exec {TESTSPACE} --port {{port}} --starts {starts} {{workspace}}",
        env={"WAKEWAY_THREADS": "1", "WAKEWAY_MAX_WEBSOCKETS_PER_SESSION": str(max(N, HERD) + 10)})
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
