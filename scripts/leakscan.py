#!/usr/bin/env python3
"""The suite-wide leak scan: does any secret value the tests used appear in
anything fleetgate printed or wrote to Git during the tests?

The integration tests (tests/cli/leakscan.rs) leave one file per capture in
DIR/captures/ (stdout, stderr, run record notes, refs, commit messages, the
forge stand-in's request bodies) and every secret value they handed to
fleetgate in DIR/secrets.jsonl. scripts/test.sh runs this after `cargo test`.

Only outputs and records are scanned: rendered files on hosts hold secrets
by design and are never captured. A finding names the file, the secret's key
and a masked hint of it (its first two characters and its length), never the
value: this script's own output is a CI log too.

    scripts/leakscan.py [DIR]     scan (default: target/tmp/leakscan)
    scripts/leakscan.py --self-test
        plants a leak in a temp dir and checks the scan finds it, so the scan
        cannot pass by seeing nothing
"""

import json
import os
import sys
import tempfile


def load(directory):
    """(files, secrets) of a leak-scan directory; secrets as (key, bytes)."""
    secrets_file = os.path.join(directory, "secrets.jsonl")
    captures = os.path.join(directory, "captures")
    if not os.path.isfile(secrets_file) or not os.path.isdir(captures):
        raise SystemExit(
            f"leakscan: {directory} has no secrets.jsonl or captures/: run `cargo test` first"
        )
    secrets = []
    with open(secrets_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                secrets.append((entry["key"], entry["value"].encode("utf-8")))
    files = []
    for root, _, names in os.walk(captures):
        files.extend(os.path.join(root, n) for n in sorted(names))
    return sorted(files), secrets


def masked(value):
    text = value.decode("utf-8", "replace")
    return f"{text[:2]}•••• ({len(text)} chars)"


def scan(directory, out):
    """Writes findings and the closing line to `out`; returns the leak count."""
    files, secrets = load(directory)
    if not files or not secrets:
        # Nothing to look at is not a pass: the capture side is broken.
        raise SystemExit(
            f"leakscan: {len(files)} files, {len(secrets)} secrets in {directory}: nothing to scan"
        )
    leaks = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for key, value in secrets:
            at = data.find(value)
            if at >= 0:
                leaks += 1
                line = data.count(b"\n", 0, at) + 1
                rel = os.path.relpath(path, directory)
                print(
                    f"leakscan: LEAK in {rel} line {line}: secret {key} = {masked(value)}",
                    file=out,
                )
    print(
        f"leakscan: {len(files)} files, {len(secrets)} secrets scanned, {leaks} leaks",
        file=out,
    )
    return leaks


def self_test():
    import io

    planted = "Planted-Secret-7e1b"
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "captures"))
        with open(os.path.join(d, "secrets.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps({"key": "secrets/x.sops.yaml:token", "value": planted}) + "\n")
            f.write(json.dumps({"key": "unicode", "value": "pässwörd-ü"}) + "\n")
        with open(os.path.join(d, "captures", "000000-clean-stdout.txt"), "w") as f:
            f.write("API_TOKEN=••••\nnothing to see\n")
        with open(os.path.join(d, "captures", "000001-leaky-stderr.txt"), "w") as f:
            f.write(f"line one\nerror: tried to include 'pw-{planted}'\n")
        with open(os.path.join(d, "captures", "000002-leaky-git.txt"), "wb") as f:
            f.write('note: {"url": "x?t=pässwörd-ü"}\n'.encode("utf-8"))
        report = io.StringIO()
        leaks = scan(d, report)
        text = report.getvalue()
        problems = []
        if leaks != 2:
            problems.append(f"found {leaks} leaks, planted 2")
        if "000001-leaky-stderr.txt line 2" not in text or "000002-leaky-git.txt" not in text:
            problems.append("a planted leak's file and line are not named")
        if "000000-clean" in text:
            problems.append("the clean file was reported")
        if planted in text or "pässwörd-ü" in text:
            problems.append("the report prints a secret value")
        if "3 files, 2 secrets scanned, 2 leaks" not in text:
            problems.append("the closing line is wrong")
        # An empty capture directory must fail, not pass.
        for name in os.listdir(os.path.join(d, "captures")):
            os.remove(os.path.join(d, "captures", name))
        try:
            scan(d, io.StringIO())
            problems.append("an empty capture directory passed")
        except SystemExit:
            pass
    if problems:
        print("leakscan self-test FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("leakscan self-test: a planted leak is found, named and masked")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    directory = argv[1] if len(argv) == 2 else os.path.join("target", "tmp", "leakscan")
    return 1 if scan(directory, sys.stdout) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
