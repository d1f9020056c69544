#!/usr/bin/env python3
"""Writes a synthetic fleet repository for benches/plan.sh (stdlib only).

    genfleet.py DIR CLIENTS

Layout: pipelines/pipeline.yaml, pipelines/known_hosts (every host's key
pinned by its name, as `check` requires), two apps (web, api) with two
templates each, and clients/cNNNNN.yaml, one per client. The first client is in group
`canary`, the rest in `production`. No secrets.
"""

import os
import sys

PIPELINE = """\
stages:
  - name: canary
    group: canary
    soak: 30s
  - name: production
    group: production
    parallelism: 10
"""

IMAGES = {
    "web": "docker.io/traefik/whoami:v1.11.0@sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab",
    "api": "docker.io/traefik/whoami:v1.11.0@sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab",
}

APP = """\
runtime: compose
images:
  web: {image}
files:
  compose.yaml: compose.yaml.j2
  app.env: app.env.j2
health:
  - http: "http://{{{{ host.address }}}}:{{{{ client.vars.port }}}}/health"
"""

COMPOSE = """\
# Rendered by fleetgate for {{ client.name }} on {{ host.name }}.
services:
  %(app)s:
    image: {{ app.images.web }}
    command: ["--port", "{{ client.vars.port }}"]
    ports: ["{{ client.vars.port }}:{{ client.vars.port }}"]
    env_file: app.env
    labels:
      traefik.http.routers.%(app)s.rule: "Host(`%(app)s.{{ client.domain }}`)"
    restart: unless-stopped
"""

ENV = """\
WHOAMI_NAME={{ client.name }}-{{ host.name }}
PUBLIC_URL=https://%(app)s.{{ client.domain }}
"""

CLIENT = """\
domain: {name}.example.org
group: {group}
apps: [web, api]
hosts:
  - name: {name}-1
    address: 10.{a}.{b}.{c}
vars:
  port: 8080
"""


# Any well-formed key: the plan never connects.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIulpxsP7LMTnHHQLwYU2WEkTUY79ISya74au5cyCV8m"


def write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main() -> None:
    root, n = sys.argv[1], int(sys.argv[2])
    if n < 2:
        sys.exit("genfleet.py: need at least 2 clients (one canary, one production)")
    os.makedirs(os.path.join(root, "pipelines"), exist_ok=True)
    write(os.path.join(root, "pipelines", "pipeline.yaml"), PIPELINE)
    for app, image in IMAGES.items():
        d = os.path.join(root, "pipelines", "apps", app)
        os.makedirs(d, exist_ok=True)
        write(os.path.join(d, "app.yaml"), APP.format(image=image))
        write(os.path.join(d, "compose.yaml.j2"), COMPOSE % {"app": app})
        write(os.path.join(d, "app.env.j2"), ENV % {"app": app})
    write(
        os.path.join(root, "pipelines", "known_hosts"),
        "".join(f"c{i:05d}-1 {HOST_KEY}\n" for i in range(n)),
    )
    clients = os.path.join(root, "clients")
    os.makedirs(clients, exist_ok=True)
    for i in range(n):
        name = f"c{i:05d}"
        write(
            os.path.join(clients, f"{name}.yaml"),
            CLIENT.format(
                name=name,
                group="canary" if i == 0 else "production",
                a=(i >> 16) & 255,
                b=(i >> 8) & 255,
                c=i & 255,
            ),
        )


if __name__ == "__main__":
    main()
