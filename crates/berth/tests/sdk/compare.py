"""What a program written for Docker's API observes, printed as lines; run unchanged against
dockerd and against berth by tests/docker_compare.rs, which wants the two outputs equal.

DOCKER_HOST names the daemon, which has `busybox:latest` (CMD sh). Each line is a label and a
normalised observation: IDs, times, addresses and sizes that legitimately differ between two
daemons are replaced by placeholders, nothing else. Issue 21's groups are marked [gN].
"""
import io
import json
import os
import re
import tarfile

import docker

api = docker.APIClient(base_url=os.environ["DOCKER_HOST"], version="1.41", timeout=60)
ids = {}


def norm(v):
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    """The observation with the daemon-specific parts replaced."""
    s = json.dumps(v, sort_keys=True, default=lambda b: b.decode(errors="replace"))
    for long_id, name in ids.items():
        s = s.replace(long_id, name).replace(long_id[:12], name)
    s = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<digest>", s)
    s = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "<time>", s)
    return s


def show(label, v):
    print(f"{label}: {norm(v)}")


def raw(method, path, label=None, keys=None, **kw):
    """One request; prints its status and body (or the named keys of it)."""
    r = api.request(method, api._url(path), **kw)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict) and keys is not None:
        body = {k: body.get(k, "<absent>") for k in keys}
    show(label or f"{method} {path}", [r.status_code, body])
    return r


def create(name, image="busybox", **kw):
    c = api.create_container(image, name=name, **kw)
    ids[c["Id"]] = f"<{name}>"
    return c["Id"]


def run(name, cmd, **kw):
    cid = create(name, command=cmd, **kw)
    api.start(cid)
    return cid


def error(label, f, *a, **kw):
    try:
        f(*a, **kw)
        show(label, "no error")
    except docker.errors.APIError as e:
        show(label, [e.response.status_code, e.explanation])


def section(f):
    """Runs one group's probes; an exception is an observation too, and the next group runs."""
    try:
        f()
    except Exception as e:  # noqa: BLE001 - printed, so the comparison shows it
        print(f"{f.__name__} raised {type(e).__name__}: {e}")
    return f


# [g1] Endpoints.
@section
def g1_0():
    run("changes", ["sh", "-c", "mkdir /d; echo a > /d/f; echo b > /etc/version; rm /bin/true"],
        host_config=api.create_host_config(network_mode="none"))
    api.wait("changes")
    show("changes", sorted((c["Path"], c["Kind"]) for c in api.diff("changes")))
    raw("DELETE", "/containers/changes/nolink")
    raw("GET", "/plugins")


# [g9] Start of a running container, stop of a stopped one.
@section
def g9_1():
    run("sleeper", ["sleep", "1000"], host_config=api.create_host_config(network_mode="none"))
    raw("POST", "/containers/sleeper/start")
    raw("POST", "/containers/changes/stop")
    raw("POST", "/containers/sleeper/stop?t=0")
    raw("POST", "/containers/sleeper/stop")
    api.remove_container("sleeper")


# [g3] Container inspect: the keys dockerd's documents have, and the values of some.
@section
def g3_2():
    cid = create(
        "inspected",
        command=["sleep", "1"],
        volumes=["/anon"],
        environment=["PLAIN", "K=V"],
        host_config=api.create_host_config(
            network_mode="none",
            binds=["/tmp:/host-tmp:ro"],
            ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=2048)],
            tmpfs={"/scratch": "size=1m"},
            shm_size="32m",
            sysctls={"net.ipv4.ip_forward": "1"},
            group_add=["1234"],
            extra_hosts={"db.example": "10.1.2.3"},
            dns=["10.0.0.53"],
            dns_search=["example.org"],
            dns_opt=["ndots:2"],
        ),
    )
    doc = api.inspect_container(cid)
    show("inspect keys", sorted(doc))
    show("HostConfig keys", sorted(doc["HostConfig"]))
    show("Config keys", sorted(doc["Config"]))
    show("State keys", sorted(doc["State"]))
    show("NetworkSettings keys", sorted(doc["NetworkSettings"]))
    hc = doc["HostConfig"]
    # Differ by design (docs/api.md): berth runs its own runtime, and every container gets a
    # cgroup namespace of its own.
    show("HostConfig.Runtime and CgroupnsMode are set", bool(hc["Runtime"] and hc["CgroupnsMode"]))
    for k in ["Binds", "CpusetCpus", "VolumesFrom", "DeviceCgroupRules",
              "PidMode", "Isolation", "MemorySwappiness", "Tmpfs", "UTSMode", "VolumeDriver",
              "Ulimits", "NetworkMode", "ShmSize", "Sysctls", "GroupAdd", "ExtraHosts", "Dns",
              "DnsSearch", "DnsOptions", "CapAdd", "CapDrop", "SecurityOpt", "Links",
              "PortBindings", "RestartPolicy", "LogConfig", "PidsLimit", "Memory", "MemorySwap"]:
        show(f"HostConfig.{k}", hc.get(k, "<absent>"))
    show("Config.Env", [e for e in doc["Config"]["Env"] if not e.startswith("PATH=")])
    show("Config.Volumes", doc["Config"].get("Volumes", "<absent>"))
    show("Mounts", sorted(
        ({k: v for k, v in m.items() if k not in ("Source", "Name")} for m in doc["Mounts"]),
        key=lambda m: m["Destination"]))
    api.remove_container(cid, v=True)

    cid = run("inside", ["sh", "-c",
                         "echo $PLAIN-$K; id -G; grep -v '^#' /etc/resolv.conf; grep db.example /etc/hosts;"
                         " df -k /dev/shm | tail -1 | awk '{print $2}'; cat /proc/sys/net/ipv4/ip_forward;"
                         " test -d /anon && echo anon"],
              volumes=["/anon"],
              environment=["PLAIN", "K=V"],
              host_config=api.create_host_config(
                  network_mode="none",
                  shm_size="32m",
                  sysctls={"net.ipv4.ip_forward": "1"},
                  group_add=["1234"],
                  extra_hosts={"db.example": "10.1.2.3"},
                  dns=["10.0.0.53"],
                  dns_search=["example.org"],
                  dns_opt=["ndots:2"],
              ))
    api.wait(cid)
    show("inside", api.logs(cid).decode().split("\n"))
    show("anonymous volume", [m["Type"] for m in api.inspect_container(cid)["Mounts"]])
    api.remove_container(cid, v=True)


# [g4] Healthcheck fields sent as null, VolumesFrom, MacAddress.
@section
def g4_3():
    raw("POST", "/containers/create?name=hc", keys=["Warnings"], json={
        "Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"},
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": None, "Timeout": None, "Retries": None,
                        "StartPeriod": None}})
    show("null healthcheck", api.inspect_container("hc")["Config"]["Healthcheck"])
    api.remove_container("hc")
    src = create("vsrc", command=["true"], volumes=["/shared"],
                 host_config=api.create_host_config(network_mode="none"))
    cid = run("vuser", ["sh", "-c", "test -d /shared && echo shared"],
              host_config=api.create_host_config(network_mode="none", volumes_from=["vsrc"]))
    api.wait(cid)
    show("volumes-from", [api.logs(cid).decode(), api.inspect_container(cid)["HostConfig"]["VolumesFrom"]])
    api.remove_container(cid)
    api.remove_container(src, v=True)


# [g5] Docker's update body.
@section
def g5_4():
    cid = run("upd", ["sleep", "1000"], host_config=api.create_host_config(network_mode="none"))
    raw("POST", "/containers/upd/update", json={
        "Memory": 64 * 1024 * 1024, "MemorySwap": 128 * 1024 * 1024, "CpuShares": 512,
        "NanoCpus": 500000000, "PidsLimit": 50, "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}})
    hc = api.inspect_container(cid)["HostConfig"]
    show("updated", [hc[k] for k in ["Memory", "MemorySwap", "CpuShares", "NanoCpus", "PidsLimit", "RestartPolicy"]])
    api.remove_container(cid, force=True)


# [g6] Exec: the start request's Tty chooses the framing.
@section
def g6_5():
    cid = run("ex", ["sleep", "1000"], host_config=api.create_host_config(network_mode="none"))
    e = api.exec_create(cid, ["sh", "-c", "echo out; echo err >&2"], tty=True)
    show("exec tty create, plain start", api.exec_start(e["Id"], tty=False, demux=True))
    e = api.exec_create(cid, ["sh", "-c", "echo out"], tty=False)
    show("exec plain create, tty start", api.exec_start(e["Id"], tty=True))
    api.remove_container(cid, force=True)



def read_all(sock, until=None):
    """What the socket gives until it closes (or `until` shows up), at most 10 s."""
    sock.settimeout(10)
    got = b""
    try:
        while until is None or until not in got:
            chunk = sock.recv(4096)
            if not chunk:
                return got, "closed"
            got += chunk
    except OSError as e:
        return got, f"still open ({type(e).__name__})"
    return got, "found"


# [g6][g9] A TTY's input: the detach keys end the attachment, not the container; a resize
# after the start reaches the terminal.
@section
def g6_detach_and_resize():
    cid = run("tty", ["sh", "-c", "read x; stty size; read y"], tty=True, stdin_open=True,
              host_config=api.create_host_config(network_mode="none"))
    sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stream": 1})
    api.resize(cid, 33, 77)
    sock._sock.sendall(b"\n")
    out, how = read_all(sock._sock, until=b"33 77")
    show("stty size after a resize", [how, b"33 77" in out])
    sock._sock.sendall(b"\x10\x11")
    _, how = read_all(sock._sock)
    show("ctrl-p ctrl-q", [how, api.inspect_container(cid)["State"]["Status"]])
    sock = api.attach_socket(cid, params={"stdin": 1, "stream": 1, "detachKeys": "ctrl-x,y"})
    sock._sock.sendall(b"\x18y")
    _, how = read_all(sock._sock)
    show("detachKeys ctrl-x,y", [how, api.inspect_container(cid)["State"]["Status"]])
    # An exec with a TTY: the exec's own detach keys.
    e = api.exec_create(cid, ["cat"], tty=True, stdin=True, detach_keys="ctrl-a")
    sock = api.exec_start(e["Id"], tty=True, socket=True)
    sock._sock.sendall(b"x\x01")
    _, how = read_all(sock._sock)
    show("exec's detach keys", how)
    # (dockerd writes this one's message as plain text on the hijacked connection)
    r = api.post(api._url(f"/containers/{cid}/attach?stream=1&stdin=1&detachKeys=ctrl-1"))
    show("bad detachKeys", [r.status_code, "Invalid detach keys (ctrl-1) provided" in r.text])
    api.remove_container(cid, force=True)


# [g8] Logging drivers.
@section
def g8_6():
    error("unknown log driver", api.create_container, "busybox", ["true"],
          host_config=api.create_host_config(log_config={"Type": "nosuch"}, network_mode="none"))
    cid = run("nolog", ["echo", "hi"], host_config=api.create_host_config(
        log_config={"Type": "none"}, network_mode="none"))
    api.wait(cid)
    error("logs of none", api.logs, cid)
    show("none driver", api.inspect_container(cid)["HostConfig"]["LogConfig"])
    api.remove_container(cid)
    error("max-file alone", api.create_container, "busybox", ["true"], host_config=api.create_host_config(
        log_config={"Type": "json-file", "Config": {"max-file": "3"}}, network_mode="none"))


# [g9] Images: a garbage archive to load, a pull that cannot succeed.
@section
def g9_7():
    r = api.post(api._url("/images/load"), data=b"this is not a tar archive")
    show("load garbage", [r.status_code, sorted(json.loads(r.text.splitlines()[-1]))])
    r = api.post(api._url("/images/create"), params={"fromImage": "127.0.0.1:9/nothing", "tag": "x"})
    show("pull refused", r.status_code)
    # Filters: name as a regex, labels, until.
    for n in ["flt-one", "flt-two"]:
        create(n, command=["true"], labels={"tier": n[-3:]}, host_config=api.create_host_config(network_mode="none"))
    show("name regex", sorted(c["Names"][0] for c in api.containers(all=True, filters={"name": "^/flt-t.o$"})))
    show("label filter", sorted(c["Names"][0] for c in api.containers(all=True, filters={"label": "tier=one"})))
    show("label key filter", sorted(c["Names"][0] for c in api.containers(all=True, filters={"label": "tier"})))
    show("prune until", api.prune_containers(filters={"until": "2000-01-01T00:00:00Z"}))
    show("prune label", sorted(norm(x) for x in api.prune_containers(filters={"label": "tier=two"})["ContainersDeleted"]))
    api.remove_container("flt-one")
    pr = api.prune_containers()
    show("prune reclaims", [len(pr["ContainersDeleted"]), pr["SpaceReclaimed"] > 0])


# [g2] Networks and volumes: create forms, inspect, filters.
@section
def g2_networks():
    n = api.create_network("cmp.net_x-1", driver="bridge", labels={"k": "v"},
                           ipam=docker.types.IPAMConfig(pool_configs=[
                               docker.types.IPAMPool(subnet="10.251.7.0/24")]))
    ids[n["Id"]] = "<cmp.net_x-1>"
    doc = api.inspect_network(n["Id"])
    show("network keys", sorted(doc))
    show("network", [doc[k] for k in ["Name", "Driver", "Scope", "EnableIPv6", "IPAM", "Internal",
                                      "Attachable", "Ingress", "Labels"]])
    r = raw("POST", "/networks/create", label="gateway null", keys=["Warning"], json={
        "Name": "cmp-gw", "IPAM": {"Config": [{"Subnet": "10.251.8.0/24", "Gateway": None}]}})
    show("gateway null IPAM", api.inspect_network("cmp-gw")["IPAM"]["Config"])
    show("id filter", [x["Name"] for x in api.networks(ids=[n["Id"][:12]])])
    # A running container on it: its endpoint in inspect and in the list, then disconnected
    # from its last network.
    cid = run("on-net", ["sleep", "1000"], host_config=api.create_host_config(network_mode="cmp.net_x-1"))
    ep = api.inspect_container(cid)["NetworkSettings"]["Networks"]["cmp.net_x-1"]
    show("endpoint keys", sorted(ep))
    show("endpoint", [ep[k] for k in ["IPAddress", "IPPrefixLen", "Gateway", "Aliases", "Links",
                                      "DriverOpts", "IPAMConfig"]] + [ep["NetworkID"] == n["Id"], bool(ep["EndpointID"])])
    listed = api.containers(filters={"name": "on-net"})[0]
    show("listed", [listed["HostConfig"], sorted(listed["NetworkSettings"]["Networks"]["cmp.net_x-1"]),
                    listed["NetworkSettings"]["Networks"]["cmp.net_x-1"]["IPAddress"]])
    # A legacy link on a user-defined network: its alias is a name for the linked container.
    # (as the docker CLI sends it: the links on the network's endpoint)
    web = run("linking", ["sh", "-c", "nslookup database | grep -c " + ep["IPAddress"] + "$"],
              host_config=api.create_host_config(network_mode="cmp.net_x-1"),
              networking_config=api.create_networking_config({
                  "cmp.net_x-1": api.create_endpoint_config(links={"on-net": "database"})}))
    api.wait(web)
    doc = api.inspect_container(web)
    show("link alias resolves", [api.logs(web).decode().strip(), doc["HostConfig"]["Links"],
                                  doc["NetworkSettings"]["Networks"]["cmp.net_x-1"]["Links"]])
    api.remove_container(web)
    r = api.post(api._url("/networks/{0}/disconnect", n["Id"]), json={"Container": cid})
    show("disconnect the last network", r.status_code)
    show("networks after", api.inspect_container(cid)["NetworkSettings"]["Networks"])
    api.remove_container(cid, force=True)
    show("label filter", [x["Name"] for x in api.networks(filters={"label": "k=v"})])
    api.remove_network("cmp-gw")
    # Names dockerd takes.
    for name in ["_under", "x@y", "a b", "a:b", "\u00e9", ".dot"]:
        made = api.create_network(name)
        show(f"network named {name!r}", api.inspect_network(made["Id"])["Name"] == name)
        api.remove_network(made["Id"])
    # IPv6: a dual-stack network, a container's addresses on it.
    v6 = api.create_network("cmp-v6", enable_ipv6=True, ipam=docker.types.IPAMConfig(pool_configs=[
        docker.types.IPAMPool(subnet="10.251.10.0/24"), docker.types.IPAMPool(subnet="fd00:251:10::/64")]))
    doc = api.inspect_network(v6["Id"])
    show("IPv6 network", [doc["EnableIPv6"], doc["IPAM"]["Config"]])
    cid = run("on-v6", ["sleep", "1000"], host_config=api.create_host_config(network_mode="cmp-v6"))
    ep = api.inspect_container(cid)["NetworkSettings"]["Networks"]["cmp-v6"]
    e = api.exec_create(cid, ["sh", "-c", "ip -6 addr show eth0 | grep -o 'inet6 fd[0-9a-f:]*/64'; ip -6 route | grep -c 'default via fd00:251:10::1'"])
    show("IPv6 endpoint", [ep["GlobalIPv6Address"], ep["GlobalIPv6PrefixLen"], ep["IPv6Gateway"],
                           api.exec_start(e["Id"]).decode().split()])
    api.remove_container(cid, force=True)
    api.remove_network(v6["Id"])
    api.remove_network(n["Id"])
    for v in ["cmp-vol-a", "cmp-vol-b"]:
        api.create_volume(v, labels={"which": v[-1]})
    show("volume name filter", [v["Name"] for v in api.volumes(filters={"name": "cmp-vol-a"})["Volumes"]])
    show("volume label filter", [v["Name"] for v in api.volumes(filters={"label": "which=b"})["Volumes"]])
    show("volume prune label", api.prune_volumes(filters={"label": "which=b"})["VolumesDeleted"])
    api.remove_volume("cmp-vol-a")


# [g7] Build: a context as docker-py sends it (no entry for its root), gzip-compressed, an
# empty Dockerfile, a failing RUN.
def context(files, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build(label, files, gz=False, **kw):
    """Builds; prints whether it succeeded and, if not, the error the stream ended with."""
    error = None
    out = []
    try:
        for m in api.build(fileobj=context(files, gz), custom_context=True, decode=True,
                           encoding="gzip" if gz else None, **kw):
            if "error" in m:
                error = m["error"].strip()
            out.append(m.get("stream", ""))
    except docker.errors.APIError as e:
        error = [e.response.status_code, e.explanation]
    show(label, error or "built")
    return "".join(out)


@section
def g7_build():
    dockerfile = "FROM busybox\nCOPY . /ctx\nRUN ls /ctx\n"
    build("copy the context root", {"Dockerfile": dockerfile, "a.txt": "a"}, tag="ctx:1")
    cid = run("ctx", ["ls", "/ctx"], image="ctx:1", host_config=api.create_host_config(network_mode="none"))
    api.wait(cid)
    show("copied", api.logs(cid).decode().split())
    api.remove_container(cid)
    build("gzip context", {"Dockerfile": dockerfile, "b.txt": "b"}, gz=True, tag="ctx:2")
    build("empty Dockerfile", {"Dockerfile": "# nothing\n"})
    build("squash", {"Dockerfile": "FROM busybox\n"}, squash=True)
    # RUN on a user-defined network, with extra hosts.
    net = api.create_network("cmp-build", ipam=docker.types.IPAMConfig(pool_configs=[
        docker.types.IPAMPool(subnet="10.251.9.0/24")]))
    out = build("on a network", {"Dockerfile": "FROM busybox\nRUN ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; grep db.example /etc/hosts\n"},
                network_mode="cmp-build", nocache=True, extra_hosts={"db.example": "10.1.2.3"})
    show("RUN's network and hosts", [line.strip() for line in out.splitlines()
                                     if line.startswith("inet") or "db.example" in line])
    api.remove_network(net["Id"])
    r = api.post(api._url("/build"), params={"platform": "bogus"},
                 data=context({"Dockerfile": "FROM busybox\n"}).read(),
                 headers={"Content-Type": "application/x-tar"})
    show("a platform that is no platform", r.status_code)
    out = build("failing RUN", {"Dockerfile": "FROM busybox\nRUN echo to-stderr >&2; exit 3\n"})
    show("RUN's stderr", [line for line in out.splitlines() if "to-stderr" in line])
    api.remove_image("ctx:1")
    api.remove_image("ctx:2")
    # Labels of images, listed and filtered on; the image a commit was made from.
    build("labelled", {"Dockerfile": "FROM busybox\nLABEL tier=x\n"}, tag="lbl:1")
    show("image label filter", [(i["RepoTags"], i["Labels"]) for i in api.images(filters={"label": "tier=x"})])
    busybox = api.inspect_image("busybox")["Id"]
    cid = create("to-commit", command=["true"], host_config=api.create_host_config(network_mode="none"))
    made = api.commit(cid, repository="committed", tag="1")["Id"]
    show("commit's parent", api.inspect_image(made)["Parent"] == busybox)
    api.remove_container(cid)
    api.remove_image("committed:1")
    api.remove_image("lbl:1")
