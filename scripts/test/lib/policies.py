"""Automatic snapshot policies against the real cairnd (test-policies.sh).

cairnd is a cairn_testfaults build whose clock runs ahead of the host's by
the duration in $T/clock (CAIRN_TEST_CLOCK_FILE). The test sets it so the
next minute's point is seconds away, then steps it a day ahead:

1. A policy with every_minutes=1 and a retention of 1 day, applied to a
   disk: its snapshot appears at the point (auto-e2e-YYYYMMDDTHHMMSSZ,
   kind auto, policy e2e, retention 1, expires a day after), and the next
   one at the next minute.
2. The clock steps a day ahead: the first snapshot has expired and is
   gone, the second (a minute younger) not yet; the day's points are
   reported missed and not back-filled, the latest (within the grace) is
   taken. A minute later the second expires too.
3. cairnd restarts: nothing is taken or reported twice.
4. The events log (API and `cairn events`) holds exactly those events, the
   capacity history has samples, and verify finds the store clean.
"""

import datetime
import os
import subprocess
import sys
import time

import nbd

from cairntest import API, Daemon, Fatal, Report, verify_clean

T = os.environ["T"]
CAIRND = os.environ["CAIRND"]
CAIRN = os.environ["CAIRN"]
CLOCK = os.path.join(T, "clock")


def current_offset():
    with open(CLOCK) as f:
        return float(f.read().strip().rstrip("s"))


def set_offset(seconds):
    with open(CLOCK + ".new", "w") as f:
        f.write(f"{seconds:.3f}s\n")
    os.replace(CLOCK + ".new", CLOCK)


def fake_now(offset):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)


def parse(t):
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))


def name_at(point):
    return "auto-e2e-" + point.strftime("%Y%m%dT%H%M%SZ")


def wait_for(what, fn, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise Fatal(f"timed out waiting for {what}")


def main():
    rep = Report("test-policies")
    os.environ["CAIRN_TEST_CLOCK_FILE"] = CLOCK
    set_offset(0)
    data = os.path.join(T, "data")
    d = Daemon(CAIRND, data, os.path.join(T, "cairnd.log"), pidfile=os.path.join(T, "cairnd.pid"))
    d.start()
    api = d.api
    try:
        run(rep, d, api)
    except Fatal as e:
        rep.bad(f"fatal: {e}")
        print(d.log_tail(n=30))
    finally:
        d.kill()
    return rep.done()


def names(api, disk="vm"):
    return [s["name"] for s in api.snapshots(disk)]


def run(rep, d, api):
    api.create_disk("vm", "64M")
    h = nbd.NBD()
    h.connect_uri(d.uri("vm"))
    h.pwrite(b"\xab" * (1 << 20), 0)
    h.flush()
    h.shutdown()

    # The next point 3 seconds from now (on the daemon's clock).
    real = datetime.datetime.now(datetime.timezone.utc)
    point = (real + datetime.timedelta(seconds=63)).replace(second=0, microsecond=0)
    offset = (point - datetime.timedelta(seconds=3) - real).total_seconds()
    set_offset(offset)
    p = api.req("POST", "/v1/policies", {"name": "e2e", "every_minutes": 1, "retention_days": 1, "time_zone": "UTC"})
    rep.check(p["weekdays"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] and p["retention_days"] == 1, "policy created", p)
    p = api.req("POST", "/v1/policies/e2e/apply", {"disks": ["vm"]})
    nxt = parse(p["targets"][0]["next_runs"][0])
    rep.check(nxt == point, f"its next run is the next minute's point, {point:%H:%M:%S}", p["targets"])

    first = name_at(point)
    wait_for(f"snapshot {first}", lambda: first in names(api))
    s = api.get_snapshot("vm", first)
    rep.check(s["kind"] == "auto" and s["policy"] == "e2e" and s["retention_days"] == 1 and
              parse(s["expires"]) - parse(s["created"]) == datetime.timedelta(days=1),
              f"{first} appeared at its point: automatic, policy e2e, kept 1 day", s)
    api.wait_snapshot("vm", first)

    # The next real minute, without waiting a minute: the clock steps to
    # 3 seconds before it (no point is passed).
    second_point = point + datetime.timedelta(minutes=1)
    set_offset((second_point - datetime.timedelta(seconds=3) - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
    second = name_at(second_point)
    wait_for(f"snapshot {second}", lambda: second in names(api))
    rep.check(names(api) == [first, second], "the next minute's snapshot appeared", names(api))
    api.wait_snapshot("vm", second)

    # A day later, 30 seconds past the first's expiry.
    day_later = parse(s["created"]) + datetime.timedelta(days=1, seconds=30)
    set_offset((day_later - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
    latest = day_later.replace(second=0, microsecond=0)
    wait_for("the first snapshot to expire", lambda: first not in names(api))
    wait_for("the latest point to be taken", lambda: name_at(latest) in names(api))
    rep.check(names(api) == [second, name_at(latest)], f"a day later: {first} expired, {second} not yet, the latest point taken", names(api))
    evs = api.req("GET", "/v1/events?policy=e2e")
    missed = [e for e in evs if e["kind"] == "missed"]
    rep.check(len(missed) == 1 and "1438 time points" in missed[0]["message"] and "not back-filled" in missed[0]["message"]
              and "within policy_grace" in missed[0]["message"], "the day's points are reported missed, not back-filled", missed)
    api.wait_snapshot("vm", name_at(latest))

    # A minute on: the second expires.
    set_offset((day_later + datetime.timedelta(seconds=62) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() )
    wait_for("the second snapshot to expire", lambda: second not in names(api))
    rep.ok(f"{second} expired a minute after the first")
    for n in names(api):
        api.wait_snapshot("vm", n)

    # A restart: nothing twice. While cairnd is down the clock passes the
    # next point; the new run takes it (within the grace), which shows the
    # scheduler ran, and nothing before it is taken or reported again.
    before_events = len(api.req("GET", "/v1/events?limit=10000"))
    before = names(api)
    rc = d.stop()
    rep.check(rc == 0, "cairnd stops cleanly", rc)
    now = fake_now(current_offset())
    restart_point = now.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    set_offset(current_offset() + (restart_point + datetime.timedelta(seconds=5) - now).total_seconds())
    d.start()
    wait_for("the point passed while cairnd was down", lambda: name_at(restart_point) in names(api))
    evs = api.req("GET", "/v1/events?limit=10000")
    new = evs[before_events:]
    rep.check([(e["kind"], e["snapshot"]) for e in new] == [("taken", name_at(restart_point))] and names(api) == before + [name_at(restart_point)],
              "a restart takes the point passed meanwhile and repeats nothing", new)

    kinds = {}
    for e in evs:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    rep.check(kinds.get("expired") == 2 and kinds.get("missed") == 1 and kinds.get("taken", 0) >= 4 and
              not kinds.get("failed") and not kinds.get("skipped"), "the events log: taken, missed, expired", kinds)
    rc = subprocess.run([CAIRN, "--socket", api.sock, "events", "--policy", "e2e", "--kind", "expired"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rep.check(rc.returncode == 0 and rc.stdout.count("expired") >= 2 and first in rc.stdout, "cairn events lists the expiries", rc.stdout)
    rc = subprocess.run([CAIRN, "--socket", api.sock, "policy", "show", "e2e"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rep.check(rc.returncode == 0 and "taken" in rc.stdout and "vm" in rc.stdout, "cairn policy show", rc.stdout)
    hist = api.req("GET", "/v1/disks/vm/capacity/history")
    rep.check(len(hist["samples"]) >= 1 and hist["interval_seconds"] == 3600, "the disk's capacity history has samples", hist)
    verify_clean(rep, api, "after automatic deletes")


if __name__ == "__main__":
    sys.exit(main())
