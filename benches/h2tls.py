"""HTTP/2 and TLS steps of the benches (imported by bench.py): h2load over TLS (h2) and cleartext (h2c, prior
knowledge), and full / resumed TLS handshakes per second with `openssl s_time`, for wakeway and nginx with the
same self-signed certificate, the same TLS 1.3 cipher suite and the same key exchange. Standard library only.

Both servers get the same parameters on purpose: an ECDSA P-256 certificate, TLS 1.3 only, TLS_AES_128_GCM_SHA256
(the clients offer only that suite, nginx allows only that suite), X25519, and a server-side session cache for
resumption (rustls' default stateful cache; nginx `ssl_session_cache` with tickets off), so the figures compare the
proxies, not the settings.
"""

import os
import re
import subprocess
import time

CIPHER = "TLS_AES_128_GCM_SHA256"
GROUP = "X25519"
# (clients, streams per connection) for h2load: one stream per connection, then many streams on a few connections.
H2_POINTS = [(32, 1), (8, 32)]


def make_cert(tmp):
    """A self-signed ECDSA P-256 certificate for localhost and *.localhost (both servers load these two files)."""
    cert, key = os.path.join(tmp, "bench-cert.pem"), os.path.join(tmp, "bench-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o644)  # nginx reads it as root here, wakeway as the bench user
    return cert, key


def nginx_tls_proxy_conf(common, http_common, tls_port, h2c_port, upstream_port, cert, key, workers):
    """nginx as the TLS (h2 + HTTP/1.1 by ALPN) and h2c reverse proxy to the same upstream as the HTTP/1.1 proxy.
    `common`/`http_common` are bench.py's shared nginx fragments (pid, logs, temp paths, keep-alive)."""
    proxy = """location / {
                proxy_pass http://up;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 16 16k; proxy_busy_buffers_size 32k;
            }"""
    return f"""worker_processes {workers};
{common}
http {{
    {http_common}
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 1000000; }}
    http2_max_concurrent_streams 128;
    server {{
        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;
        ssl_certificate {cert}; ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {CIPHER};
        ssl_ecdh_curve {GROUP};
        ssl_session_cache shared:BENCH:10m; ssl_session_tickets off;
        {proxy}
    }}
    server {{
        listen 127.0.0.1:{h2c_port} http2 backlog=4096;
        {proxy}
    }}
}}
"""


def _h2load_num(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not m:
        raise RuntimeError(f"h2load printed no {what}:\n{text}")
    return m.group(1)


def h2load(url, connect_port, clients, streams, seconds):
    """h2load (one thread) for `seconds`, each of `clients` connections with up to `streams` concurrent streams;
    `url` carries the virtual host (SNI and :authority), the connection goes to 127.0.0.1:connect_port."""
    cmd = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{seconds}",
           f"--connect-to=127.0.0.1:{connect_port}", f"--tls13-ciphers={CIPHER}", url]
    if seconds > 1:  # warm the connections and the proxy's upstream pool first (as the wrk steps do)
        subprocess.run(cmd[:4] + ["-D1"] + cmd[5:], capture_output=True, timeout=60)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = r.stdout + r.stderr
    ok = {"rps": float(_h2load_num(r"finished in [\d.]+\w*, ([\d.]+) req/s", out, "req/s")),
          "done": int(_h2load_num(r"requests: \d+ total, \d+ started, (\d+) done", out, "requests done")),
          "succeeded": int(_h2load_num(r"requests: .* (\d+) succeeded", out, "requests succeeded")),
          "failed": int(_h2load_num(r"requests: .* (\d+) failed", out, "requests failed")),
          "errored": int(_h2load_num(r"requests: .* (\d+) errored", out, "requests errored")),
          "status_2xx": int(_h2load_num(r"status codes: (\d+) 2xx", out, "status codes"))}
    m = re.search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", out, re.M)
    ok["mean_request"] = m.group(1) if m else None
    for key, pattern in (("protocol", r"^Application protocol: (\S+)"), ("tls", r"^TLS Protocol: (\S+)"),
                         ("cipher", r"^Cipher: (\S+)"), ("kx", r"^Server Temp Key: (\S+)")):
        m = re.search(pattern, out, re.M)
        ok[key] = m.group(1) if m else None
    return ok


def s_time(port, reuse, seconds):
    """`openssl s_time` for `seconds`: TLS 1.3 handshakes one after another (a new session each time, or resuming
    the first one), each followed by one tiny HTTP/1.0 request (`-www`: without reading a response the client never
    sees the TLS 1.3 session ticket, so nothing could resume). Returns handshakes/s over the wall-clock time of the
    run (s_time's own "real seconds" are whole seconds) and how many handshakes really resumed."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if reuse else "-new", "-tls1_3",
           "-ciphersuites", CIPHER, "-time", str(seconds), "-www", "/"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    real = time.perf_counter() - t0
    out = r.stdout + r.stderr
    m = re.search(r"(\d+) connections in [\d.]+ real seconds", out)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"openssl s_time failed ({r.returncode}):\n{out[-2000:]}")
    count, real = int(m.group(1)), round(real, 2)
    # s_time prints one character per handshake in the timed loop: 'r' resumed, '*' full.
    marks = "".join(line for line in out.splitlines() if re.fullmatch(r"[r*]+", line))
    return {"handshakes": count, "seconds": real, "per_s": round(count / real, 1) if real else 0.0,
            "resumed": marks.count("r"), "full": marks.count("*")}


def run(targets, seconds, log):
    """The HTTP/2 and handshake steps over `targets`: [(name, tls_port, h2c_port or None, host)].
    Returns {"h2": [rows], "handshakes": [rows]} with each target's ratio to nginx."""
    rows = []
    for proto in ("h2", "h2c"):
        for clients, streams in H2_POINTS:
            for name, tls_port, h2c_port, host in targets:
                port = tls_port if proto == "h2" else h2c_port
                if port is None:
                    continue
                scheme = "https" if proto == "h2" else "http"
                d = h2load(f"{scheme}://{host}:{port}/small", port, clients, streams, seconds)
                d.update(target=name, proto=proto, clients=clients, streams=streams)
                rows.append(d)
                log(f"{proto:3} c={clients:<2} m={streams:<2} {name:8} {d['rps']:>9.0f} req/s  "
                    f"{d['status_2xx']}/{d['done']} 2xx  {d['protocol']} {d['cipher'] or ''} {d['kx'] or ''}")
    by = {(r["target"], r["proto"], r["clients"], r["streams"]): r for r in rows}
    for r in rows:
        ng = by.get(("nginx", r["proto"], r["clients"], r["streams"]))
        r["rps_vs_nginx"] = round(r["rps"] / ng["rps"], 3) if ng and ng["rps"] else None
    shakes = []
    for reuse in (False, True):
        for name, tls_port, _, _ in targets:
            d = s_time(tls_port, reuse, seconds)
            d.update(target=name, kind="resumed" if reuse else "full")
            shakes.append(d)
            log(f"TLS {d['kind']:7} {name:8} {d['per_s']:>8.0f} handshakes/s  ({d['handshakes']} in "
                f"{d['seconds']} s; {d['resumed']} resumed, {d['full']} full)")
    hb = {(s["target"], s["kind"]): s for s in shakes}
    for s in shakes:
        ng = hb.get(("nginx", s["kind"]))
        s["per_s_vs_nginx"] = round(s["per_s"] / ng["per_s"], 3) if ng and ng["per_s"] else None
    return {"h2": rows, "handshakes": shakes, "cipher": CIPHER, "group": GROUP, "points": H2_POINTS}


def render_md(r):
    """The HTTP/2 and handshake tables of latest.md."""
    lines = [f"| HTTP/2 (h2load -t1, 100 B) | clients × streams | target | req/s | ×nginx | 2xx / done | ALPN, "
             f"cipher, key exchange |", "|---|---:|---|---:|---:|---:|---|"]
    for x in r["h2"]:
        ratio = f"{x['rps_vs_nginx']:.2f}" if x["rps_vs_nginx"] is not None else ""
        tls = ", ".join(v for v in (x["protocol"], x["cipher"], x["kx"]) if v)
        lines.append(f"| {x['proto']} | {x['clients']} × {x['streams']} | {x['target']} | {x['rps']:.0f} | {ratio} | "
                     f"{x['status_2xx']} / {x['done']} | {tls} |")
    lines += ["", "| TLS 1.3 handshakes (openssl s_time, one client) | target | handshakes/s | ×nginx | "
              "resumed / full seen |", "|---|---|---:|---:|---:|"]
    for s in r["handshakes"]:
        ratio = f"{s['per_s_vs_nginx']:.2f}" if s["per_s_vs_nginx"] is not None else ""
        lines.append(f"| {s['kind']} | {s['target']} | {s['per_s']:.0f} | {ratio} | {s['resumed']} / {s['full']} |")
    return "\n".join(lines) + "\n"


def smoke_problems(r):
    """What the smoke run (CI) checks: every point answered every request 2xx over the protocol it asked for,
    the handshakes happened, and -reuse really resumed (never a speed)."""
    problems = []
    for x in r["h2"]:
        # h2load counts the requests still in flight when -D ends as failed, at most one per stream; a response
        # that arrives as it ends may count as 2xx without counting as succeeded (seen: 24,247 2xx, 24,246 done).
        in_flight = x["clients"] * x["streams"]
        all_2xx = x["succeeded"] <= x["status_2xx"] <= x["succeeded"] + in_flight
        if x["succeeded"] == 0 or not all_2xx or x["failed"] > in_flight \
                or x["protocol"] != x["proto"]:
            problems.append(f"{x['proto']} {x['target']} c={x['clients']} m={x['streams']}: {x}")
    for s in r["handshakes"]:
        resumed_ok = s["resumed"] >= s["handshakes"] - 1 if s["kind"] == "resumed" else s["resumed"] == 0
        if s["handshakes"] == 0 or not resumed_ok:
            problems.append(f"TLS {s['kind']} {s['target']}: {s}")
    return problems
