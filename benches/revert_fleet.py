#!/usr/bin/env python3
"""Helper of benches/revert.sh (stdlib only): picks host ports, writes the
fleet repository, runs one `fleetgate run` while watching the hosts and the
remote, and prints the report.

    revert_fleet.py ports    N
    revert_fleet.py fleet    REPO HOSTS_TSV VERSION HEALTH INTERVAL FAILURES KEX
    revert_fleet.py appstart
    revert_fleet.py watch    --out PREFIX --kind good|bad --hosts HOSTS_TSV
                             --prev V --new V --remote DIR --branch B
                             [--prev-sha SHA --new-sha SHA] [--poll-ms 20]
                             -- FLEETGATE ARGS...
    revert_fleet.py report   RESULTS_DIR INTERVAL FAILURES POLL_MS HEADER

HOSTS_TSV has one line per host: name, client, port (sshd), host dir, host
key (`ssh-ed25519 AAAA...`). The app `web` of client <client> serves its
release directory with python3's http.server on 127.0.0.1:<port + 1000>, so
GET /health returns the rendered file `health`: "<ok|bad>\\nversion=<V>\\n".
The health gate expects "ok" in the body: a release with health `bad` fails
its gate, and the canary stage is rolled back and reverted.

`watch` runs fleetgate as its child and timestamps, on one monotonic clock:
each stderr line as it arrives; per host, the first answer with version NEW
and (kind `bad`) the first answer with version PREV after that; (kind `bad`)
the moment `refs/heads/<branch>` on the remote changes (`git ls-remote`).
It writes PREFIX.json (times in seconds since fleetgate was started),
PREFIX.err (stderr with arrival times) and PREFIX.out (stdout), checks that
the run did what it should, and exits 1 when it did not.
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

USER = "fleetgate-test"
KEX_OPTION = {"default": None, "curve25519": "curve25519-sha256"}

APP_YAML = """\
runtime: command
files:
  start.sh: start.sh.j2
  health: health.j2
commands:
  start: "sh start.sh"
health:
  - http: "http://127.0.0.1:{{{{ host.port + 1000 }}}}/health"
    expect_status: 200
    expect_body: "ok"
    interval: {interval}
    timeout: 1s
    successes: 2
    failures: {failures}
    deadline: 60s
rollback: safe
"""

# Replaces the previous server, then serves the release directory on port
# ssh+1000. It waits until the old server has exited (its port is free), not
# until it is reaped: a killed server is orphaned (setsid) and stays a zombie
# until PID 1 reaps it, which in some containers and VMs takes seconds, so
# `kill -0` would wait for the reaper, not for the server.
START_SH = """\
pid=../../web.pid
if [ -f "$pid" ]; then
  old=$(cat "$pid")
  if kill "$old" 2>/dev/null; then
    i=0
    while [ $i -lt 500 ]; do
      state=$(cut -d' ' -f3 "/proc/$old/stat" 2>/dev/null) || break
      case $state in Z | X | "") break ;; esac
      sleep 0.01
      i=$((i + 1))
    done
  fi
fi
setsid nohup python3 -m http.server {{ host.port + 1000 }} --bind 127.0.0.1 >../../web.log 2>&1 </dev/null &
echo $! > "$pid"
"""

HEALTH = "{{ client.vars.health }}\nversion={{ client.vars.version }}\n"


def hosts(tsv):
    out = []
    with open(tsv, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            name, client, port, hdir, key = line.rstrip("\n").split("\t")
            out.append(
                {"name": name, "client": client, "port": int(port), "dir": hdir, "key": key}
            )
    return out


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_ports(n):
    """N sshd ports below the ephemeral range, each with port+1000 free too
    (the app's HTTP port), none colliding with another's +1000."""
    taken = set()
    rng = random.Random(os.getpid())

    def free(p):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
        finally:
            s.close()

    out = []
    for _ in range(100000):
        if len(out) == n:
            break
        p = rng.randrange(20000, 29000)
        if {p, p + 1000} & taken or not (free(p) and free(p + 1000)):
            continue
        taken |= {p, p + 1000, p - 1000}
        out.append(p)
    if len(out) < n:
        sys.exit(f"revert_fleet.py: only {len(out)} of {n} free port pairs")
    for p in out:
        print(p)


def cmd_fleet(repo, tsv, version, health, interval, failures, kex):
    hs = hosts(tsv)
    pipeline = (
        "stages:\n"
        "  - name: canary\n"
        "    group: canary\n"
        f"    parallelism: {max(len(hs), 1)}\n"
        "    max_failures: 0\n"
        "on_failure:\n"
        "  rollback: true\n"
        "  revert: true\n"
    )
    if KEX_OPTION[kex]:
        pipeline += f"ssh:\n  options:\n    KexAlgorithms: {KEX_OPTION[kex]}\n"
    write(f"{repo}/pipelines/pipeline.yaml", pipeline)
    write(
        f"{repo}/pipelines/apps/web/app.yaml",
        APP_YAML.format(interval=interval, failures=failures),
    )
    write(f"{repo}/pipelines/apps/web/start.sh.j2", START_SH)
    write(f"{repo}/pipelines/apps/web/health.j2", HEALTH)
    write(
        f"{repo}/pipelines/known_hosts",
        "".join(f"[127.0.0.1]:{h['port']} {h['key']}\n" for h in hs),
    )
    for h in hs:
        write(
            f"{repo}/clients/{h['client']}.yaml",
            f"domain: {h['client']}.example.org\n"
            "group: canary\n"
            "apps: [web]\n"
            "hosts:\n"
            f"  - name: {h['name']}\n"
            "    address: 127.0.0.1\n"
            f"    port: {h['port']}\n"
            f"    user: {USER}\n"
            f"    deploy_root: {h['dir']}/deploy\n"
            "vars:\n"
            f'  version: "{version}"\n'
            f"  health: {health}\n",
        )


def serving(port, timeout=0.5):
    """The version the app on `port` serves, or None."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", "/health")
        r = c.getresponse()
        body = r.read().decode("utf-8", "replace")
        c.close()
    except (OSError, http.client.HTTPException):
        return None
    if r.status != 200:
        return None
    m = re.search(r"^version=(\S+)$", body, re.M)
    return m.group(1) if m else None


def cmd_appstart():
    """Median time from spawning `python3 -m http.server` to its first answer:
    the app's own share of a restart."""
    times = []
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        t0 = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        try:
            while time.monotonic() - t0 < 10:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
                    c.request("HEAD", "/")
                    c.getresponse().read()
                    c.close()
                    times.append(time.monotonic() - t0)
                    break
                except (OSError, http.client.HTTPException):
                    time.sleep(0.005)
        finally:
            p.terminate()
            p.wait()
    print(f"{statistics.median(times):.3f}" if times else "nan")


def ls_remote(remote, branch):
    out = subprocess.run(
        ["git", "ls-remote", remote, f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] if out else None


STEP = re.compile(r"^(\S+) (?:(\S+) )?(health after rollback|health|rollback|restart|start|switch|upload|connect) ([✓✗]) ")


def cmd_watch(a):
    hs = hosts(a.hosts)
    bad = a.kind == "bad"
    fast = threading.Event()  # poll every poll-ms (before: every 100 ms)
    stop = threading.Event()
    if not bad:
        fast.set()
    per_host = {h["name"]: {"new": None, "back": None} for h in hs}
    poll = {"requests": 0, "cycles": []}
    remote = {"before": ls_remote(a.remote, a.branch), "after": None, "at": None}

    def now():
        return time.monotonic() - t0

    def poll_hosts():
        todo = list(hs)
        while todo and not stop.is_set():
            start = time.monotonic()
            for h in list(todo):
                v = serving(h["port"] + 1000)
                t = now()
                poll["requests"] += 1
                st = per_host[h["name"]]
                if v == a.new and st["new"] is None:
                    st["new"] = t
                    if not bad:
                        todo.remove(h)
                elif bad and v == a.prev and st["new"] is not None and st["back"] is None:
                    st["back"] = t
                    todo.remove(h)
            took = time.monotonic() - start
            if fast.is_set():
                poll["cycles"].append(took)
            period = a.poll_ms / 1000 if fast.is_set() else 0.1
            time.sleep(max(0.0, period - took))

    def poll_remote():
        while not stop.is_set():
            sha = ls_remote(a.remote, a.branch)
            if sha and sha != remote["before"]:
                remote["after"], remote["at"] = sha, now()
                return
            time.sleep(a.poll_ms / 1000 if fast.is_set() else 0.1)

    t0 = time.monotonic()
    with open(a.out + ".out", "w", encoding="utf-8") as out:
        proc = subprocess.Popen(a.cmd, stdout=out, stderr=subprocess.PIPE)
    threads = [threading.Thread(target=poll_hosts, daemon=True)]
    if bad:
        threads.append(threading.Thread(target=poll_remote, daemon=True))
    for t in threads:
        t.start()
    lines = []
    for raw in proc.stderr:
        t = now()
        text = raw.decode("utf-8", "replace").rstrip("\n")
        lines.append((t, text))
        m = STEP.match(text)
        if m and m.group(3) == "health" and m.group(4) == "✗":
            fast.set()
    rc = proc.wait()
    t_exit = now()
    # What is still pending gets a few seconds more, then the watch ends.
    deadline = time.monotonic() + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    for t in threads:
        t.join()
    with open(a.out + ".err", "w", encoding="utf-8") as f:
        for t, text in lines:
            f.write(f"{t:8.3f} {text}\n")

    # Per-host step lines: the time each host logged each step.
    steps = {}
    events = {}
    for t, text in lines:
        m = STEP.match(text)
        if m:
            host, _app, step, mark = m.groups()
            steps.setdefault(f"{step} {mark}", {}).setdefault(host, t)
        elif text.startswith("error: stage ") and " failed: " in text:
            events.setdefault("stage failed logged", t)
        elif text.startswith("reverted ") and " with " in text:
            events.setdefault("reverted logged", t)

    def first(key):
        v = steps.get(key, {})
        return min(v.values()) if v else None

    def last(key):
        v = steps.get(key, {})
        return max(v.values()) if len(v) == len(hs) else None

    for name, key in [
        ("first connect ✓", "connect ✓"),
        ("last connect ✓", "connect ✓"),
        ("first health ✓", "health ✓"),
        ("last health ✓", "health ✓"),
        ("first health ✗", "health ✗"),
        ("last health ✗", "health ✗"),
        ("last rollback ✓", "rollback ✓"),
        ("last restart ✓", "restart ✓"),
        ("last health after rollback ✓", "health after rollback ✓"),
    ]:
        v = first(key) if name.startswith("first") else last(key)
        if v is not None:
            events[name] = v
    news = [s["new"] for s in per_host.values()]
    backs = [s["back"] for s in per_host.values()]
    if all(v is not None for v in news):
        events["all serve new"] = max(news)
    if all(v is not None for v in backs):
        events["all serve previous"] = max(backs)
    if remote["at"] is not None:
        events["revert on origin"] = remote["at"]
    events["exit"] = t_exit

    # Did the run do what it should?
    problems = []
    want_rc = 1 if bad else 0
    if rc != want_rc:
        problems.append(f"fleetgate exited {rc}, expected {want_rc}")
    want_v = a.prev if bad else a.new
    for h in hs:
        v = serving(h["port"] + 1000)
        if v != want_v:
            problems.append(f"{h['name']} serves version {v!r}, expected {want_v!r}")
        if per_host[h["name"]]["new"] is None:
            problems.append(f"{h['name']} was never seen serving version {a.new!r}")
        if bad and per_host[h["name"]]["back"] is None:
            problems.append(f"{h['name']} was never seen serving version {a.prev!r} again")
    if bad:
        git = ["git", "--git-dir", a.remote]
        tip = ls_remote(a.remote, a.branch)
        if remote["after"] is None or tip != remote["after"]:
            problems.append(f"{a.branch} on the remote: {remote['before']} -> {tip} (no revert seen)")
        else:
            msg = subprocess.run(git + ["log", "-1", "--format=%B", tip], capture_output=True, text=True).stdout
            parent = subprocess.run(git + ["rev-parse", f"{tip}^"], capture_output=True, text=True).stdout.strip()
            trees = [
                subprocess.run(git + ["rev-parse", f"{c}^{{tree}}"], capture_output=True, text=True).stdout.strip()
                for c in (tip, a.prev_sha)
            ]
            if f"Fleetgate-Reverts: {a.new_sha}" not in msg or "Fleetgate-Failed-Gate: canary/" not in msg:
                problems.append(f"the remote's {a.branch} ({tip[:12]}) lacks the revert trailers:\n{msg}")
            if parent != a.new_sha:
                problems.append(f"the revert's parent is {parent[:12]}, expected the failed head {a.new_sha[:12]}")
            if trees[0] != trees[1]:
                problems.append("the revert's tree is not the previous release's tree")
        if "reverted logged" not in events:
            problems.append("no `reverted ... on <branch> with ...` line on stderr")

    result = {
        "kind": a.kind,
        "rc": rc,
        "prev": a.prev,
        "new": a.new,
        "hosts": per_host,
        "events": events,
        "steps": steps,
        "poll": {
            "requests": poll["requests"],
            "cycle_median": statistics.median(poll["cycles"]) if poll["cycles"] else None,
            "cycle_max": max(poll["cycles"]) if poll["cycles"] else None,
        },
        "remote": remote,
        "problems": problems,
    }
    with open(a.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    if problems:
        print(f"revert_fleet.py: the {a.kind} run did not do what it should:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)


def seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not m:
        sys.exit(f"revert_fleet.py: cannot read duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


def cmd_report(results_dir, interval_text, failures, poll_ms, header):
    interval = seconds(interval_text)
    target = 5.0 + interval
    runs = []
    for name in sorted(os.listdir(results_dir)):
        if name.startswith("bad-") and name.endswith(".json"):
            good = os.path.join(results_dir, "good-" + name[len("bad-") :])
            with open(os.path.join(results_dir, name), encoding="utf-8") as f:
                b = json.load(f)
            with open(good, encoding="utf-8") as f:
                g = json.load(f)
            runs.append((g, b))
    if not runs:
        sys.exit("revert_fleet.py: no runs to report")

    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def span(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        s = f"{statistics.median(vals):6.2f} s"
        if len(vals) > 1:
            s += f"  ({min(vals):.2f}-{max(vals):.2f})"
        return s

    def since(ev, a, b):
        if a in ev and b in ev:
            return ev[b] - ev[a]
        return None

    bad_ev = [b["events"] for _, b in runs]
    good_ev = [g["events"] for g, _ in runs]
    a_first = [since(e, "first health ✗", "all serve previous") for e in bad_ev]
    a_last = [since(e, "last health ✗", "all serve previous") for e in bad_ev]
    b_first = [since(e, "first health ✗", "revert on origin") for e in bad_ev]
    b_log = [since(e, "first health ✗", "reverted logged") for e in bad_ev]
    per_host = []
    for e, (_, b) in zip(bad_ev, runs):
        for h in b["hosts"].values():
            if h["back"] is not None and "first health ✗" in e:
                per_host.append(h["back"] - e["first health ✗"])
    deploy_serving = [e.get("all serve new") for e in good_ev]
    deploy_wall = [e.get("exit") for e in good_ev]
    polls = [r["poll"]["cycle_median"] for pair in runs for r in pair]

    print(header)
    print(
        f"health gate: GET /health every {interval_text}, fails after {failures} failures in a row; "
        f"target (a) < 5 s + 1 interval = {target:.2f} s"
    )
    print(
        f"{len(runs)} timed round(s); a poller GETs every host's /health every {poll_ms} ms "
        f"(a sweep of all hosts takes {1000 * med(polls):.0f} ms median): times are first observations"
    )
    print()
    print("(a) failed health gate -> every canary host serves the previous release")
    print(f"  from the first failed gate                 {span(a_first)}")
    print(f"  from the last failed gate (stage decided)  {span(a_last)}")
    print(f"  per host, from the first failed gate       {span(per_host)}   [{len(per_host)} host rollbacks, max {max(per_host):.2f} s]")
    print("(b) failed health gate -> revert commit on origin")
    print(f"  from the first failed gate (ls-remote)     {span(b_first)}")
    print(f"  same, by the `reverted` log line           {span(b_log)}")
    print("baseline: plain deploy of the same hosts (`fleetgate run`, a healthy new version)")
    print(f"  start -> every host serves the new release {span(deploy_serving)}")
    print(f"  wall time (health gate and records too)    {span(deploy_wall)}")
    print()

    def ratio(label, num, den, target_text=None, ok=None):
        if num is None or den is None or den == 0:
            print(f"  {label:44} -")
            return
        r = num / den
        tail = ""
        if target_text:
            tail = f"  target {target_text}: {'met' if ok(r) else 'MISSED'}"
        print(f"  {label:44} {r:6.2f}x{tail}")

    ma, mb = med(a_first), med(b_first)
    print("ratios (medians):")
    ratio("(a) / (5 s + 1 health interval)", ma, target, "< 1x", lambda r: r < 1)
    ratio("(a) / health interval", ma, interval)
    ratio("(a) / plain deploy, start -> all serving", ma, med(deploy_serving))
    ratio("(a) / plain deploy, wall time", ma, med(deploy_wall))
    ratio("(b) / (5 s + 1 health interval)", mb, target)
    ratio("(b) / plain deploy, wall time", mb, med(deploy_wall))
    print()

    order = [
        ("start", f"fleetgate run started (plan, connect, deploy of the broken release, {failures} failed probes)"),
        ("first connect ✓", "first host connected"),
        ("last connect ✓", "last host connected"),
        ("first health ✗", "first host's health gate failed"),
        ("last health ✗", "last host's gate failed: the stage is decided, rollback starts on every host"),
        ("last rollback ✓", "last host switched `current` back"),
        ("last restart ✓", "last host restarted the previous release (old server stopped, new one spawned)"),
        ("all serve previous", "every host serves the previous release  (a)"),
        ("last health after rollback ✓", "last host passed its health gate again"),
        ("stage failed logged", "`stage canary failed` logged (records pushed)"),
        ("reverted logged", "`reverted ...` logged"),
        ("revert on origin", "revert commit seen on origin  (b)"),
        ("exit", "fleetgate exits"),
    ]
    print("where the time goes (median over runs, seconds relative to the first failed gate):")
    rows = []
    for key, label in order:
        v = med([since(e, "first health ✗", key) if key != "start" else
                 (-e["first health ✗"] if "first health ✗" in e else None) for e in bad_ev])
        rows.append((v, label))
    for v, label in sorted(rows, key=lambda r: (r[0] is None, r[0] if r[0] is not None else 0)):
        print(f"  {format(v, '+7.2f') if v is not None else '      -'}  {label}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        cmd_ports(int(args[0]))
    elif cmd == "fleet":
        cmd_fleet(*args[:7])
    elif cmd == "appstart":
        cmd_appstart()
    elif cmd == "watch":
        p = argparse.ArgumentParser(prog="revert_fleet.py watch")
        p.add_argument("--out", required=True)
        p.add_argument("--kind", choices=["good", "bad"], required=True)
        p.add_argument("--hosts", required=True)
        p.add_argument("--prev", required=True)
        p.add_argument("--new", required=True)
        p.add_argument("--remote", required=True)
        p.add_argument("--branch", default="main")
        p.add_argument("--prev-sha", default="")
        p.add_argument("--new-sha", default="")
        p.add_argument("--poll-ms", type=float, default=20)
        p.add_argument("cmd", nargs=argparse.REMAINDER)
        a = p.parse_args(args)
        if a.cmd[:1] == ["--"]:
            a.cmd = a.cmd[1:]
        cmd_watch(a)
    elif cmd == "report":
        cmd_report(*args[:5])
    else:
        sys.exit(f"revert_fleet.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
