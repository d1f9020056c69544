#!/usr/bin/env python3
"""Helper of benches/deploy.sh (stdlib only): writes the fleet repository and
the Ansible and pyinfra inventories for the bench hosts, checks that a run
really deployed, and prints the report.

    deploy_fleet.py fleet    REPO HOSTS_TSV X KEX
    deploy_fleet.py ansible  OUT  HOSTS_TSV X KEX REV KEY KNOWN_HOSTS
    deploy_fleet.py pyinfra  OUT  HOSTS_TSV X REV KEY KNOWN_HOSTS
    deploy_fleet.py verify   TOOL HOSTS_TSV X [FLEETGATE_JSON]
    deploy_fleet.py report   RESULTS_TSV STEPS_DIR HOSTS RUNS HEADER

HOSTS_TSV has one line per host: name, client, port, host dir, host key
(`ssh-ed25519 AAAA...`). Every tool deploys the same two templates
(pipelines/apps/web/*.j2) into <host dir>/<tool>/<client>/web/releases/<REV>/,
points <...>/web/current at it and runs `sh run.sh` there, which writes
<...>/web/started.txt = "started <host> <X>". KEX is `default` (OpenSSH's own
choice, post-quantum on OpenSSH >= 9.0) or `curve25519` (curve25519-sha256).
"""

import json
import os
import statistics
import sys

USER = "fleetgate-test"
KEX_OPTION = {"default": None, "curve25519": "curve25519-sha256"}

APP_CONF = """\
# app.conf for {{ client.name }} on {{ host.name }}, rendered per host.
domain = {{ client.domain }}
listen = 127.0.0.1:8080
public_url = https://web.{{ client.domain }}/
x = {{ client.vars.x }}
"""

RUN_SH = """\
# Started from the release directory.
echo started {{ host.name }} {{ client.vars.x }} > ../../started.txt
"""

APP_YAML = """\
runtime: command
files:
  app.conf: app.conf.j2
  run.sh: run.sh.j2
commands:
  start: "sh run.sh"
rollback: safe
"""


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


def root(h, tool):
    return f"{h['dir']}/{tool}"


def client_data(h, x):
    return {
        "name": h["client"],
        "domain": f"{h['client']}.example.org",
        "vars": {"x": str(x)},
    }


def cmd_fleet(repo, tsv, x, kex):
    hs = hosts(tsv)
    pipeline = (
        "stages:\n"
        "  - name: production\n"
        "    group: production\n"
        f"    parallelism: {max(len(hs), 1)}\n"
        "on_failure:\n"
        "  rollback: true\n"
        "  revert: false\n"
    )
    if KEX_OPTION[kex]:
        pipeline += f"ssh:\n  options:\n    KexAlgorithms: {KEX_OPTION[kex]}\n"
    write(f"{repo}/pipelines/pipeline.yaml", pipeline)
    write(f"{repo}/pipelines/apps/web/app.yaml", APP_YAML)
    write(f"{repo}/pipelines/apps/web/app.conf.j2", APP_CONF)
    write(f"{repo}/pipelines/apps/web/run.sh.j2", RUN_SH)
    write(
        f"{repo}/pipelines/known_hosts",
        "".join(f"[127.0.0.1]:{h['port']} {h['key']}\n" for h in hs),
    )
    for h in hs:
        write(
            f"{repo}/clients/{h['client']}.yaml",
            f"domain: {h['client']}.example.org\n"
            "group: production\n"
            "apps: [web]\n"
            "hosts:\n"
            f"  - name: {h['name']}\n"
            "    address: 127.0.0.1\n"
            f"    port: {h['port']}\n"
            f"    user: {USER}\n"
            f"    deploy_root: {root(h, 'fleetgate')}\n"
            "vars:\n"
            f'  x: "{x}"\n',
        )


def cmd_ansible(out, tsv, x, kex, rev, key, known):
    hs = hosts(tsv)
    args = [
        "-F /dev/null",
        f"-o UserKnownHostsFile={known}",
        "-o StrictHostKeyChecking=yes",
        "-o IdentitiesOnly=yes",
    ]
    if KEX_OPTION[kex]:
        args.append(f"-o KexAlgorithms={KEX_OPTION[kex]}")
    inv = {
        "all": {
            "vars": {
                "ansible_user": USER,
                "ansible_ssh_private_key_file": key,
                "ansible_ssh_common_args": " ".join(args),
                "ansible_python_interpreter": "/usr/bin/python3",
                "rev": rev,
            },
            "hosts": {
                h["name"]: {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": h["port"],
                    "deploy_root": root(h, "ansible"),
                    "client": client_data(h, x),
                    "host": {"name": h["name"]},
                }
                for h in hs
            },
        }
    }
    # JSON is YAML: ansible's yaml inventory plugin reads it.
    write(out, json.dumps(inv, indent=1) + "\n")


def cmd_pyinfra(out, tsv, x, rev, key, known):
    hs = hosts(tsv)
    # Paramiko has no post-quantum key exchange: it always offers
    # curve25519-sha256@libssh.org first, the same algorithm as OpenSSH's
    # curve25519-sha256.
    common = {
        "ssh_user": USER,
        "ssh_key": key,
        "ssh_known_hosts_file": known,
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        "ssh_config_file": "/dev/null",
        "rev": rev,
    }
    entries = []
    for h in hs:
        data = dict(common)
        data.update(
            ssh_hostname="127.0.0.1",
            ssh_port=h["port"],
            deploy_root=root(h, "pyinfra"),
            client=client_data(h, x),
        )
        entries.append((h["name"], data))
    write(out, "# written by benches/deploy_fleet.py\nhosts = " + repr(entries) + "\n")


def cmd_verify(tool, tsv, x, fg_json=None):
    hs = hosts(tsv)
    problems = []
    if fg_json:
        with open(fg_json, encoding="utf-8") as f:
            out = json.load(f)
        status = {h["host"]: h["status"] for h in out.get("hosts", [])}
        for h in hs:
            if status.get(h["name"]) != "deployed":
                problems.append(f"{h['name']}: fleetgate status {status.get(h['name'])!r}")
    for h in hs:
        app = f"{root(h, tool)}/{h['client']}/web"
        want = f"started {h['name']} {x}\n"
        try:
            got = open(f"{app}/started.txt", encoding="utf-8").read()
        except OSError as e:
            got = f"<{e.strerror}>"
        if got != want:
            problems.append(f"{h['name']}: {app}/started.txt is {got!r}, expected {want!r}")
            continue
        try:
            conf = open(f"{app}/current/app.conf", encoding="utf-8").read()
        except OSError as e:
            conf = f"<{e.strerror}>"
        if f"x = {x}\n" not in conf or f"on {h['name']}," not in conf:
            problems.append(f"{h['name']}: {app}/current/app.conf is not the one of x={x}")
    if problems:
        print(f"{tool}: {len(problems)} host(s) not deployed:", file=sys.stderr)
        for p in problems[:10]:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)


# fleetgate records a `health` step even without checks, timed from the
# host's start: it spans inspect..prune, so it is left out of the step list.
STEP_ORDER = ["connect", "inspect", "upload", "switch", "start", "prune"]


def host_steps(fg_json):
    """Per host: {step: seconds}, plus `total` (connect + the host's own time)."""
    with open(fg_json, encoding="utf-8") as f:
        out = json.load(f)
    rows = []
    for h in out["hosts"]:
        steps = {}
        for s in h["steps"]:
            steps[s["step"]] = steps.get(s["step"], 0.0) + s["seconds"]
        steps["after connect"] = h["seconds"]
        steps["total"] = steps.get("connect", 0.0) + h["seconds"]
        rows.append(steps)
    return rows


def cmd_report(results_tsv, steps_dir, n_hosts, runs, header):
    times = {}
    with open(results_tsv, encoding="utf-8") as f:
        for line in f:
            tool, kex, secs = line.split()
            times.setdefault((tool, kex), []).append(float(secs))
    med = {k: statistics.median(v) for k, v in times.items()}
    kexes = ["default", "curve25519"]
    tools = [
        ("floor", f"{n_hosts}x ssh true (parallel)"),
        ("fleetgate", "fleetgate deploy"),
        ("shards", "fleetgate deploy, N shards"),
        ("ansible", "ansible-playbook"),
        ("pyinfra", "pyinfra"),
    ]

    def cell(tool, kex):
        v = times.get((tool, kex))
        if not v:
            return f"{'-':>8}{'':14}"
        spread = f"{min(v):.2f}-{max(v):.2f}" if len(v) > 1 else ""
        return f"{med[(tool, kex)]:8.2f} s {spread:>11}"

    print(header)
    print(f"wall time, median of {runs} run(s) (min-max), {n_hosts} hosts")
    print(f"{'':32} {'default kex':>22} {'curve25519-sha256':>22}")
    for tool, label in tools:
        print(f"{label:32} {cell(tool, 'default')} {cell(tool, 'curve25519')}")
    print("  pyinfra (paramiko) has no post-quantum kex: it always uses curve25519-sha256@libssh.org")

    def ratio(a, b):
        if a in med and b in med and med[b] > 0:
            return med[a] / med[b]
        return None

    def show(r, target, ok):
        if r is None:
            return f"{'-':>8}"
        return f"{r:7.2f}x  target {target}: {'met' if ok(r) else 'MISSED'}"

    print("ratios (same kex):")
    for kex in kexes:
        r = ratio(("ansible", kex), ("fleetgate", kex))
        print(f"  {kex:10} ansible / fleetgate  {show(r, '>= 10x', lambda r: r >= 10)}")
    r = ratio(("pyinfra", "curve25519"), ("fleetgate", "curve25519"))
    print(f"  {'curve25519':10} pyinfra / fleetgate  {show(r, '> 1x', lambda r: r > 1)}")
    for kex in kexes:
        r = ratio(("fleetgate", kex), ("floor", kex))
        print(f"  {kex:10} fleetgate / floor    {show(r, '<= 2x', lambda r: r <= 2)}")
    for kex in kexes:
        r = ratio(("shards", kex), ("fleetgate", kex))
        if r is not None:
            print(f"  {kex:10} N shards / 1 shard   {r:7.2f}x  (coordination overhead on one machine)")
    r = ratio(("pyinfra", "curve25519"), ("fleetgate", "default"))
    if r is not None:
        print(f"  (cross-kex: pyinfra curve25519 / fleetgate default kex = {r:.2f}x)")

    # fleetgate's own per-host step times (from its JSON report).
    for kex in kexes:
        d = os.path.join(steps_dir, kex)
        if not os.path.isdir(d):
            continue
        rows = []
        walls = []
        for name in sorted(os.listdir(d)):
            if name.endswith(".json"):
                rs = host_steps(os.path.join(d, name))
                rows.extend(rs)
                wall_file = os.path.join(d, name[: -len(".json")] + ".wall")
                if os.path.exists(wall_file):
                    walls.append((float(open(wall_file).read()), max(r["total"] for r in rs)))
        if not rows:
            continue
        print(f"fleetgate per-host steps, {kex} kex ({len(rows)} host runs): median / max seconds")
        parts = []
        for step in STEP_ORDER + ["after connect", "total"]:
            vals = [r[step] for r in rows if step in r]
            if vals:
                parts.append(f"{step} {statistics.median(vals):.2f}/{max(vals):.2f}")
        print("  " + ", ".join(parts))
        if walls:
            outside = [w - t for w, t in walls]
            print(
                "  wall minus the slowest host (start-up, render, closing connections): "
                f"median {statistics.median(outside):.2f} s"
            )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fleet":
        cmd_fleet(args[0], args[1], args[2], args[3])
    elif cmd == "ansible":
        cmd_ansible(*args[:7])
    elif cmd == "pyinfra":
        cmd_pyinfra(*args[:6])
    elif cmd == "verify":
        cmd_verify(*args[:4])
    elif cmd == "report":
        cmd_report(args[0], args[1], int(args[2]), int(args[3]), args[4])
    else:
        sys.exit(f"deploy_fleet.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
