"""A session of the Python Docker SDK (PyPI `docker`) against berth's daemon.

DOCKER_HOST names the daemon, REGISTRY a registry on loopback (no auth). Prints "ok" when
every step did what the SDK's user expects; any failure raises.
"""
import io
import os
import time

import docker

c = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto", timeout=120)
registry = os.environ["REGISTRY"]

assert c.ping() is True
assert c.version()["ApiVersion"] == "1.50", c.version()
info = c.info()
assert info["OSType"] == "linux"
# dockerd's booleans, as clients read them (issue 21, group 9).
assert info["Debug"] is False and info["ExperimentalBuild"] is False, info
# No swarm: dockerd's 503s, which the SDK turns into what its users expect.
assert c.swarm.leave(force=True) is True
try:
    c.nodes.list()
    raise AssertionError("listing swarm nodes outside a swarm succeeded")
except docker.errors.APIError as e:
    assert e.response.status_code == 503, e
    assert "not a swarm manager" in str(e), e

# Containers: run (attached, detached), logs, exec, stop, remove.
assert c.containers.run("busybox", ["echo", "hello"], remove=True) == b"hello\n"
try:
    c.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 3"], remove=True)
    raise AssertionError("a failing command raised nothing")
except docker.errors.ContainerError as e:
    assert e.exit_status == 3, e

ctr = c.containers.run(
    "busybox",
    ["sh", "-c", "echo up; exec sleep 1000"],
    detach=True,
    name="sdk",
    environment={"GREETING": "hi"},
    labels={"role": "test"},
)
ctr.reload()
assert ctr.status == "running", ctr.status
assert ctr.name == "sdk"
assert ctr.labels["role"] == "test"
for _ in range(50):
    if b"up" in ctr.logs():
        break
    time.sleep(0.1)
assert ctr.logs() == b"up\n", ctr.logs()
r = ctr.exec_run(["sh", "-c", "echo $GREETING"])
assert (r.exit_code, r.output) == (0, b"hi\n"), r
r = ctr.exec_run(["sh", "-c", "exit 4"])
assert r.exit_code == 4, r
assert [x.name for x in c.containers.list(filters={"label": "role=test"})] == ["sdk"]
ctr.stop(timeout=1)
ctr.reload()
assert ctr.status == "exited", ctr.status
assert ctr.wait()["StatusCode"] == 137
ctr.remove()
assert c.containers.list(all=True) == []

# Images: build, tag, push, remove, pull, list.
img, logs = c.images.build(
    fileobj=io.BytesIO(b"FROM busybox\nRUN echo from-sdk > /f\nCMD [\"cat\", \"/f\"]\n"),
    tag="sdk:1",
    rm=True,
)
assert "sdk:1" in img.tags, img.tags
assert c.containers.run("sdk:1", remove=True) == b"from-sdk\n"
repo = f"{registry}/sdk/img"
assert img.tag(repo, "1")
pushed = list(c.images.push(repo, tag="1", stream=True, decode=True))
assert not any("error" in p for p in pushed), pushed
assert any("digest" in str(p.get("status", "")) for p in pushed), pushed
c.images.remove(f"{repo}:1")
c.images.remove("sdk:1")
pulled = c.images.pull(repo, tag="1")
assert f"{repo}:1" in pulled.tags, pulled.tags
assert c.containers.run(f"{repo}:1", remove=True) == b"from-sdk\n"
assert any(f"{repo}:1" in i.tags for i in c.images.list())

# Networks and volumes.
net = c.networks.create("sdknet", driver="bridge")
box = c.containers.run("busybox", ["sleep", "1000"], detach=True, name="box")
net.connect(box, aliases=["b"])
box.reload()
assert "sdknet" in box.attrs["NetworkSettings"]["Networks"], box.attrs["NetworkSettings"]
net.disconnect(box)
box.remove(force=True)
net.remove()
assert "sdknet" not in [n.name for n in c.networks.list()]
vol = c.volumes.create("sdkvol")
c.containers.run("busybox", ["sh", "-c", "echo kept > /v/f"], volumes={"sdkvol": {"bind": "/v", "mode": "rw"}}, remove=True)
assert c.containers.run("busybox", ["cat", "/v/f"], volumes=["sdkvol:/v"], remove=True) == b"kept\n"
assert "sdkvol" in [v.name for v in c.volumes.list()]
vol.remove()

# Legacy links on the default bridge: Docker's variables and the hosts entry (the dockerd of
# tests/docker_compare.rs runs without a default bridge, so these are checked here).
db = c.containers.run("busybox", ["sleep", "1000"], detach=True, name="linkdb",
                      environment={"DBPASS": "s3cret"})
db.reload()
ip = db.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
web = c.containers.run("busybox", ["sh", "-c", "env | grep ^DATABASE_ | sort; grep database /etc/hosts"],
                       links={"linkdb": "database"}, name="linkweb", detach=True)
assert web.wait()["StatusCode"] == 0
out = web.logs().decode()
assert "DATABASE_NAME=/linkweb/database\n" in out, out
assert "DATABASE_ENV_DBPASS=s3cret\n" in out, out
assert f"{ip}\tdatabase {db.id[:12]} linkdb\n" in out, out
web.reload()
assert web.attrs["HostConfig"]["Links"] == ["/linkdb:/linkweb/database"], web.attrs["HostConfig"]
# A link to a container that is not running stops the start, as in dockerd.
db.stop(timeout=0)
try:
    web.start()
    raise AssertionError("a link to a stopped container started")
except docker.errors.APIError as e:
    assert e.response.status_code == 409 and "Cannot link to a non running container" in str(e), e
web.remove()
db.remove()
print("ok")
