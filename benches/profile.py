#!/usr/bin/env python3
"""Where wakeway's per-request time goes.

wakeway (1 thread) in front of the benches' nginx workspace under `wrk -t2 -c32` on /small:
1. `perf record -e cpu-clock -g` on wakeway for 10 s, then perf's split by DSO and the top symbols;
2. `strace -c -f` on wakeway, then on an nginx reverse proxy, for 3 s each under `wrk -c1`: system calls per request.

Run after benches/run.sh has built everything: `python3 benches/profile.py` (needs `perf` and `strace`:
apt-get install linux-perf strace). The perf data file is kept and its path printed.
"""

import os
import re
import subprocess
import tempfile
import time

import bench


def start(tmp):
    """The upstream nginx, an nginx reverse proxy (returns its worker's pid) and wakeway with a running session."""
    docroot = bench.write_docroot(tmp)
    up_port, px_port = bench.free_port(), bench.free_port()
    up_dir, px_dir = os.path.join(tmp, "upstream"), os.path.join(tmp, "proxy")
    bench.start_nginx(up_dir, up_port, bench.upstream_conf(up_dir, up_port, docroot))
    proxy = bench.start_nginx(px_dir, px_port, bench.proxy_conf(px_dir, px_port, up_port))
    ww, port = bench.start_wakeway(tmp, "wakeway", bench.nginx_workspace(tmp, docroot, os.path.join(tmp, "starts")),
                                   env={"WAKEWAY_THREADS": "1"})
    _, host = bench.running_session(port, "profile@example.com")
    worker = int(subprocess.check_output(["pgrep", "-P", str(proxy.pid)]).split()[0])
    return ww.pid, port, host, worker, px_port


def wrk(port, host, conc, seconds):
    cmd = ["wrk", f"-t{1 if conc == 1 else 2}", f"-c{conc}", f"-d{seconds}s"]
    cmd += ["-H", f"Host: {host}"] if host else []
    return subprocess.Popen(cmd + [f"http://127.0.0.1:{port}/small"], stdout=subprocess.PIPE, text=True)


def requests_per_s(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def main():
    tmp = tempfile.mkdtemp(prefix="wakeway-profile-")
    os.chmod(tmp, 0o755)
    try:
        ww_pid, port, host, nginx_worker, px_port = start(tmp)
        load = wrk(port, host, 32, 14)
        time.sleep(2)
        data = os.path.join(tmp, "perf.data")
        subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(ww_pid), "-o", data,
                        "--", "sleep", "10"], capture_output=True, check=True)
        print(f"under perf: {requests_per_s(load.communicate()[0]):.0f} req/s (wrk -t2 -c32)")
        for sort in ("dso", "symbol"):
            r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio", "-g", "none"],
                               capture_output=True, text=True)
            rows = [line[:150] for line in r.stdout.splitlines() if "%" in line and not line.startswith("#")]
            print(f"\n-- by {sort}\n" + "\n".join(rows[:30]))
        print("\n-- system calls per request (strace -c, wrk -c1)")
        for name, pid, p, h in (("wakeway", ww_pid, port, host), ("nginx", nginx_worker, px_port, None)):
            load = wrk(p, h, 1, 6)
            time.sleep(1)
            trace = subprocess.run(["timeout", "-s", "INT", "3", "strace", "-c", "-f", "-p", str(pid)],
                                   capture_output=True, text=True).stderr
            load.communicate()
            calls = {}
            for line in trace.splitlines():
                cols = line.split()
                if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] not in ("total", "syscall"):
                    calls[cols[-1]] = int(cols[3])
            # Two recvfrom per proxied request (the client's request, the upstream's response): the unit.
            per = max(calls.get("recvfrom", 0) / 2, 1)
            busy = {k: v for k, v in calls.items() if k not in ("clock_nanosleep", "futex", "restart_syscall")}
            print(f"{name}: " + ", ".join(f"{k} {v / per:.2f}" for k, v in sorted(busy.items(), key=lambda kv: -kv[1]))
                  + f"  (total {sum(busy.values()) / per:.2f} per request)")
        print(f"\nperf data: {data}")
    finally:
        for p in reversed(bench.procs):
            bench.stop(p)
        starts = os.path.join(tmp, "starts")
        for line in open(starts).read().splitlines() if os.path.exists(starts) else []:
            try:
                os.killpg(int(line.split()[2]), 15)
            except (ProcessLookupError, PermissionError, ValueError, IndexError):
                pass


if __name__ == "__main__":
    main()
