#!/usr/bin/env python3
"""Where wakeway's per-request time goes: wakeway (1 thread) in front of the bench's nginx workspace, wrk -t2 -c32
on /small, `perf record -e cpu-clock -g` on wakeway for 10 s, then perf's split by DSO and the top symbols.
Run after benches/run.sh has built everything: `python3 benches/profile.py` (needs `perf`: apt-get install linux-perf).
"""
import bench, os, tempfile, subprocess, time, sys
tmp=tempfile.mkdtemp(); os.chmod(tmp,0o755)
bench.WRK_SCRIPT=os.path.join(tmp,"r.lua"); open(bench.WRK_SCRIPT,"w").write(bench.WRK_LUA)
doc=os.path.join(tmp,"www"); os.makedirs(doc); open(doc+"/small","wb").write(bench.SMALL)
os.chmod(doc+"/small",0o644); os.chmod(doc,0o755)
tpl=os.path.join(tmp,"t.in"); open(tpl,"w").write(bench.upstream_conf("@DIR@","@PORT@","@ROOT@"))
wr=os.path.join(tmp,"ws.sh"); open(wr,"w").write(bench.WORKSPACE_WRAPPER.replace("@NGINX@",bench.NGINX)); os.chmod(wr,0o755)
port=bench.free_port()
env=dict(os.environ,WAKEWAY_LISTEN=f"127.0.0.1:{port}",WAKEWAY_DATA_DIR=tmp+"/d",WAKEWAY_API_KEY=bench.API_KEY,WAKEWAY_THREADS="1",
 WAKEWAY_WORKSPACE_COMMAND=f"exec {wr} {{port}} {{state}} {doc} {tmp}/starts {tpl}",WAKEWAY_LOG="warn",WAKEWAY_SHUTDOWN_GRACE="0s")
ww=bench.spawn([bench.BIN+"/wakeway","serve"],tmp+"/ww.log",env=env); bench.wait_port(port)
sid=bench.api(port,"POST","/session/create",{"user_id":"p@example.com"})["uuid"]; bench.wait_state(port,sid,"running")
host=f"vs-code-{sid}.localhost:{port}"
w=subprocess.Popen(["wrk","-t2","-c32","-d14s","-H",f"Host: {host}",f"http://127.0.0.1:{port}/small"],stdout=subprocess.PIPE,text=True)
time.sleep(2)
subprocess.run(["perf","record","-e","cpu-clock","-F","999","-g","-p",str(ww.pid),"-o",tmp+"/perf.data","--","sleep","10"],capture_output=True)
print(w.communicate()[0])
bench.stop(ww)
for l in open(tmp+"/starts"):
    try: os.killpg(int(l.split()[2]),15)
    except Exception: pass
for sort in ("dso", "symbol"):
    r = subprocess.run(["perf", "report", "-i", tmp + "/perf.data", "--no-children", "--sort", sort, "--stdio", "-g", "none"],
                       capture_output=True, text=True)
    print("\n".join([line[:160] for line in r.stdout.splitlines() if "%" in line and not line.startswith("#")][:30]))
print(f"perf data: {tmp}/perf.data")
