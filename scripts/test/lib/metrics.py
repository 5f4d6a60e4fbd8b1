"""Prometheus metrics against a real Prometheus (test-metrics.sh).

1. cairnd with --metrics-listen on a free loopback port.
2. fio (ioengine=nbd) writes 32 MiB in 64 KiB blocks, then reads 8 MiB in
   4 KiB random blocks; its JSON report gives the bytes and operations.
3. promtool check metrics accepts cairnd's exposition.
4. Prometheus (own config, scrape every second, the shipped alert rules,
   a TSDB in the scratch directory, a free port) scrapes cairnd; queries
   through its HTTP API return the I/O counters equal to fio's figures,
   the target is up, and the rules loaded and evaluate without error.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from cairntest import Daemon, Fatal, Report, run

T = os.environ["T"]
CAIRND = os.environ["CAIRND"]
RULES = os.environ["RULES"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def fio(rep, uri, name, *args):
    rc, out = run(["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--output-format=json", *args])
    if rc != 0:
        raise Fatal(f"fio {name}: exit {rc}: {out[-2000:]}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


def main():
    rep = Report("test-metrics")
    port = free_port()
    d = Daemon(CAIRND, os.path.join(T, "data"), os.path.join(T, "cairnd.log"), args=["--metrics-listen", f"127.0.0.1:{port}"],
               pidfile=os.path.join(T, "cairnd.pid"))
    prom = None
    try:
        d.start()
        prom = run_checks(rep, d, port)
    except Fatal as e:
        rep.bad(f"fatal: {e}")
        print(d.log_tail(n=20))
    finally:
        if prom:
            prom.terminate()
            try:
                prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prom.kill()
        d.kill()
    return rep.done()


def run_checks(rep, d, port):
    api = d.api
    info = api.req("GET", "/v1/info")
    rep.check(info.get("metrics_listen") == f"127.0.0.1:{port}", "cairnd serves metrics on the port asked", info)
    api.create_disk("m", "64M")
    uri = d.uri("m")
    w = fio(rep, uri, "write", "--rw=write", "--bs=64k", "--size=32M", "--iodepth=8")["write"]
    r = fio(rep, uri, "read", "--rw=randread", "--bs=4k", "--size=32M", "--io_size=8M", "--iodepth=16")["read"]
    rep.info(f"fio wrote {w['io_bytes']} bytes in {w['total_ios']} ops, read {r['io_bytes']} bytes in {r['total_ios']} ops")

    status, text = get(f"http://127.0.0.1:{port}/metrics")
    rep.check(status == 200 and "cairn_io_bytes_total" in text, "GET /metrics on --metrics-listen", status)
    p = subprocess.run(["promtool", "check", "metrics"], input=text, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rep.check(p.returncode == 0, "promtool check metrics accepts the exposition", p.stdout)

    prom_port = free_port()
    cfg = os.path.join(T, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: cairn
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    log = open(os.path.join(T, "prometheus.log"), "wb")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(T, 'tsdb')}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{prom_port}"

    def query(q):
        _, body = get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        out = json.loads(body)
        if out["status"] != "success":
            raise Fatal(f"query {q}: {out}")
        return out["data"]["result"]

    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and prom.poll() is None:
        try:
            ready = get(base + "/-/ready")[0] == 200
        except OSError:
            pass
        if ready:
            break
        time.sleep(0.2)
    if not ready:
        raise Fatal(f"prometheus did not become ready (exit {prom.poll()}); see {T}/prometheus.log")
    rep.ok("prometheus is ready")

    want = {
        'cairn_io_bytes_total{job="cairn",frontend="nbd",disk="m",op="write"}': w["io_bytes"],
        'cairn_io_operations_total{job="cairn",frontend="nbd",disk="m",op="write"}': w["total_ios"],
        'cairn_io_bytes_total{job="cairn",frontend="nbd",disk="m",op="read"}': r["io_bytes"],
        'cairn_io_operations_total{job="cairn",frontend="nbd",disk="m",op="read"}': r["total_ios"],
    }
    got = {}
    while time.monotonic() < deadline and len(got) < len(want):
        for q in want:
            res = query(q)
            if res:
                got[q] = float(res[0]["value"][1])
        time.sleep(0.5)
    for q, v in want.items():
        rep.check(got.get(q) == v, f"prometheus: {q} = {v} (fio's figure)", got.get(q))
    up = query('up{job="cairn"}')
    rep.check(len(up) == 1 and up[0]["value"][1] == "1", "prometheus: the cairn target is up", up)
    lat = query('sum(cairn_io_duration_seconds_count{job="cairn",frontend="nbd",op="write"})')
    rep.check(lat and float(lat[0]["value"][1]) == w["total_ios"], "prometheus: the write latency histogram counts every write", lat)

    _, body = get(base + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [ru for g in groups for ru in g["rules"]]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(ru.get("health") != "ok" for ru in rules):
        time.sleep(0.5)
        rules = [ru for g in json.loads(get(base + "/api/v1/rules")[1])["data"]["groups"] for ru in g["rules"]]
    rep.check(len(rules) == 9 and all(ru.get("health") == "ok" for ru in rules),
              f"prometheus: the {len(rules)} shipped alert rules load and evaluate", [(ru["name"], ru.get("health"), ru.get("lastError")) for ru in rules])
    firing = [ru["name"] for ru in rules if ru.get("state") != "inactive"]
    rep.check(firing == [], "no alert fires on a healthy cairnd", firing)
    return prom


if __name__ == "__main__":
    sys.exit(main())
