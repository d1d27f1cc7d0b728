#!/usr/bin/env python3
"""A/B: wakeway builds or settings side by side with nginx, in alternating rounds (for tuning; the
before/after figures in the closing notes come from here).

    python3 benches/ab.py [--rounds 3] [--seconds 10] NAME=BINARY[,ENV=VALUE...] ...
    python3 benches/ab.py --websockets N [--rounds 3] NAME=BINARY[,ENV=VALUE...] ...

e.g. `python3 benches/ab.py before=/tmp/wakeway-old now=target/release/wakeway
nosteal=target/release/wakeway,WAKEWAY_X=1`. Every variant proxies to the same nginx upstream (its own
workspace is that upstream's config, as in bench.py), which is also measured directly: the "added p50" column
is a target's p50 minus the upstream's own in the same round (bench.py's added latency at c=1). Prints the
median of the rounds per point. A variant gets only the WAKEWAY_* variables every build knows (an older build
refuses unknown ones): give newer ones per variant, e.g. `now=target/release/wakeway,WAKEWAY_LOCAL_ISOLATION=off`
beside a build from before that key.

With `--websockets N`, each round starts nginx and every variant afresh in front of one wakeway-testspace, in a
new random order, opens N idle WebSockets through each (as benches/websockets.py does) and prints the RSS growth
per connection; the table gives the medians.
"""

import argparse
import os
import random
import statistics
import tempfile
import time

import bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--points", default="small:1,small:32,small:128,large:32")
    ap.add_argument("--websockets", type=int, default=0, metavar="N")
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()
    if args.websockets:
        import websockets  # noqa: PLC0415 (its N and fd checks are only for this mode)
        return websockets.ab(args.variants, args.rounds, args.websockets)
    tmp = tempfile.mkdtemp(prefix="wakeway-ab-")
    os.chmod(tmp, 0o755)
    bench.WRK_SCRIPT = os.path.join(tmp, "report.lua")
    open(bench.WRK_SCRIPT, "w").write(bench.WRK_LUA)
    docroot = bench.write_docroot(tmp)
    up_port, px_port = bench.free_port(), bench.free_port()
    up_dir, px_dir = os.path.join(tmp, "upstream"), os.path.join(tmp, "nginx")
    targets = [("nginx", px_port, None), ("direct", up_port, None)]
    try:
        bench.start_nginx(up_dir, up_port, bench.upstream_conf(up_dir, up_port, docroot))
        bench.start_nginx(px_dir, px_port, bench.proxy_conf(px_dir, px_port, up_port))
        run(args, tmp, bench.nginx_workspace(tmp, docroot, os.path.join(tmp, "starts")), targets)
    finally:
        for p in reversed(bench.procs):
            bench.stop(p)
        time.sleep(0.2)


def run(args, tmp, workspace_command, targets):
    for v in args.variants:
        name, spec = v.split("=", 1)
        binary, *envs = spec.split(",")
        env = {"WAKEWAY_THREADS": "1", **dict(e.split("=", 1) for e in envs)}
        _, port = bench.start_wakeway(tmp, name, workspace_command, binary=os.path.abspath(binary), env=env)
        _, host = bench.running_session(port, "ab@example.com")
        targets.append((name, port, host))
    points = [(p.split(":")[0], int(p.split(":")[1])) for p in args.points.split(",")]
    got = {}
    for r in range(args.rounds):
        for size, conc in points:
            # nginx first, then the variants in a new random order each time: no variant always
            # runs last (after the machine has been loaded longest).
            order = targets[:2] + random.sample(targets[2:], len(targets) - 2)
            for name, port, host in order:
                bench.wrk(f"http://127.0.0.1:{port}/{size}", conc, host, seconds=1)
                d = bench.wrk(f"http://127.0.0.1:{port}/{size}", conc, host, seconds=args.seconds)
                got.setdefault((size, conc, name), []).append(d)
                print(f"round {r} {size:5} c={conc:<3} {name:10} {d['rps']:>8.0f} req/s "
                      f"p50 {d['p50_us'] / 1000:6.2f} p99 {d['p99_us'] / 1000:6.2f} ms", flush=True)
    print(f"\nload average {bench.load_avg()}; medians of {args.rounds} rounds of {args.seconds} s")
    print("| point | target | req/s | ×nginx | p50 ms | added p50 ms | p99 ms | p99 ×nginx |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    for size, conc in points:
        med = {n: (statistics.median(d["rps"] for d in got[(size, conc, n)]),
                   statistics.median(d["p50_us"] for d in got[(size, conc, n)]),
                   statistics.median(d["p99_us"] for d in got[(size, conc, n)])) for n, _, _ in targets}
        added = {n: statistics.median(d["p50_us"] - e["p50_us"] for d, e in
                                      zip(got[(size, conc, n)], got[(size, conc, "direct")])) for n, _, _ in targets}
        for n, _, _ in targets:
            rps, p50, p99 = med[n]
            print(f"| {size} c={conc} | {n} | {rps:.0f} | {rps / med['nginx'][0]:.2f} | {p50 / 1000:.3f} | "
                  f"{added[n] / 1000:.3f} | {p99 / 1000:.2f} | {p99 / max(med['nginx'][2], 1):.2f} |")


if __name__ == "__main__":
    main()
