#!/bin/sh
# One docker CLI session whose output is what a user observes (exit codes, container output,
# ps/inspect/images fields), run unchanged against dockerd and against berth by
# tests/docker_compare.rs, which wants the two outputs equal. DOCKER_HOST names the daemon,
# TAR a busybox root file system tarball. Containers use --network none on both sides.
set -u
d() { docker "$@"; }
d import -c 'CMD ["sh"]' "$TAR" busybox:latest >/dev/null
echo "run: $(d run --rm --network none busybox echo hello)"
d run --rm --network none busybox sh -c 'exit 7'; echo "exit code: $?"
d run --rm --network none busybox no-such-command 2>/dev/null; echo "missing command: $?"
d run --rm --network none -e A=b -w /tmp -u 1:1 busybox sh -c 'echo $A $(pwd) $(id -u):$(id -g)'
d run --rm --network none --entrypoint echo busybox via entrypoint
echo stdin | d run --rm -i --network none busybox cat
d run -d --name web --network none -e A=b -l role=web busybox sleep 1000 >/dev/null; echo "detached: $?"
d ps --format '{{.Names}} {{.Image}} {{.Command}} {{.Labels}}'
d ps -q | wc -l
d inspect -f '{{.Name}} {{.State.Status}} {{.State.Running}} {{.Config.Image}} {{.Config.Cmd}} {{.HostConfig.NetworkMode}}' web
d exec web sh -c 'echo in exec $A'
d exec web sh -c 'exit 3'; echo "exec exit code: $?"
d exec -u 2 web id -u
d top web -o args | tail -n +2
d logs web | wc -c
d pause web >/dev/null; d inspect -f '{{.State.Status}} {{.State.Paused}}' web
d unpause web >/dev/null; d inspect -f '{{.State.Status}} {{.State.Paused}}' web
d rename web site; d ps --format '{{.Names}}'
d stop -t 1 site >/dev/null; d inspect -f '{{.State.Status}} {{.State.ExitCode}}' site
d start site >/dev/null; d kill -s KILL site >/dev/null; d wait site
d rm site >/dev/null; d inspect site >/dev/null 2>&1; echo "inspect after rm: $?"
d run --name t --network none busybox sh -c 'echo out; echo err >&2' 2>&1 | sort
d wait t
d logs t 2>&1 | sort
d rm t >/dev/null
d rm no-such-container >/dev/null 2>&1; echo "rm missing: $?"
d volume create v1
d run --rm --network none -v v1:/d busybox sh -c 'echo x > /d/f; cat /d/f'
d volume ls -q
d volume rm v1
d network create n1 >/dev/null; echo "network create: $?"
d network ls --format '{{.Name}} {{.Driver}}' | grep -E '^(n1|host|none) ' | sort
d network inspect -f '{{.Name}} {{.Driver}} {{.Internal}}' n1
d network rm n1
d tag busybox:latest bb:2
d images --format '{{.Repository}}:{{.Tag}}' | sort
d image inspect -f '{{.Config.Cmd}} {{.Os}}' bb:2
d rmi bb:2
d rmi no-such-image >/dev/null 2>&1; echo "rmi missing: $?"
d ps -a -q | wc -l
