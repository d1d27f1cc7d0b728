"""Caddy and HAProxy as reverse-proxy baselines (imported by bench.py), each held to one core the way nginx
(worker_processes 1) and configurable-http-proxy (one Node.js thread) are: Caddy with GOMAXPROCS=1, HAProxy with
nbthread 1. Both proxy HTTP/1.1 with upstream keep-alive to the same nginx upstream, logs off."""

import os
import shutil

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def caddy(tmp, port, upstream_port):
    """(argv, env) of Caddy proxying 127.0.0.1:port to the upstream: no admin API, no automatic HTTPS, its state
    under tmp (never ~/.local/share/caddy)."""
    d = os.path.join(tmp, "caddy")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "Caddyfile")
    open(conf, "w").write(f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    reverse_proxy 127.0.0.1:{upstream_port}
}}
""")
    env = dict(os.environ, GOMAXPROCS="1", XDG_DATA_HOME=os.path.join(d, "xdg-data"),
               XDG_CONFIG_HOME=os.path.join(d, "xdg-config"), HOME=d)
    return [CADDY, "run", "--config", conf, "--adapter", "caddyfile"], env


def haproxy(tmp, port, upstream_port):
    """argv of HAProxy (foreground, one thread) proxying 127.0.0.1:port to the upstream, reusing its
    upstream connections."""
    d = os.path.join(tmp, "haproxy")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "haproxy.cfg")
    open(conf, "w").write(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend up
backend up
    server up 127.0.0.1:{upstream_port} maxconn 1024
""")
    return [HAPROXY, "-db", "-f", conf]


def versions(out):
    """Their version lines, with bench.py's `out(cmd)`."""
    return {"caddy": out([CADDY, "version"]), "haproxy": out([HAPROXY, "-v"])}
