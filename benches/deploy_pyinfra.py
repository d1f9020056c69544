# The pyinfra side of benches/deploy.sh: the same 2-file release as fleetgate's
# `web` app, to the same layout (see benches/deploy_playbook.yml). Host data
# (deploy_root, client, rev) comes from the inventory deploy_fleet.py writes;
# TEMPLATES in the environment names the directory of the .j2 files.
import os

from pyinfra import host
from pyinfra.operations import files, server

templates = os.environ["TEMPLATES"]
client = host.data.client
app_dir = f"{host.data.deploy_root}/{client['name']}/web"
release = f"{app_dir}/releases/{host.data.rev}"

files.directory(name="release directory", path=release, mode="750")
files.template(
    name="render app.conf",
    src=f"{templates}/app.conf.j2",
    dest=f"{release}/app.conf",
    mode="644",
    client=client,
)
files.template(
    name="upload run.sh",
    src=f"{templates}/run.sh.j2",
    dest=f"{release}/run.sh",
    mode="644",
    client=client,
)
files.link(name="switch current", path=f"{app_dir}/current", target=f"releases/{host.data.rev}")
server.shell(name="start", commands=[f"cd {release} && sh run.sh"])
