#!/usr/bin/env bash
# End-to-end test of `procnode node` against a real Kubernetes control plane (v1.20, built by
# tests/e2e/control-plane.sh, everything on 127.0.0.1), checked with kubectl:
#   1. the node registers and becomes Ready with the host's real capacity;
#   2. a Job with the node selector and toleration completes; `kubectl logs job/...` shows it;
#   3. a Deployment scaled 1 → 5 → 0 runs exactly that many processes;
#   4. `kubectl delete pod` stops the process within its grace period;
#   5. a pod whose command fails shows Error with its exit code;
#   6. procnode killed with SIGKILL and started again loses no pod: running ones keep running
#      (not restarted), a Job that finished meanwhile is Completed with its output.
# procnode runs as the ServiceAccount of examples/node-rbac.yaml under RBAC, so every step also
# checks that role. Along the way: Secrets/ConfigMaps, `kubectl logs -f`, stats through the node proxy, the
# kubelet port's authentication (the API server shows its client certificate; others need a
# token the API server knows), the web API beside, and (procnode runs with --pod-root overlay)
# a pod whose init container fills a volume at a path the host does not have, and kubectl exec,
# cp and port-forward (with the RBAC of examples/debugger-rbac.yaml).
# Bounded in time (E2E_TIMEOUT, default 900 s); every process it started is stopped at the end.
#
#   bash tests/e2e/node.sh            # after `cargo build`
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

# Run as a child subreaper: the supervisors of the procnode killed in step 6 are re-parented to
# this shell, which reaps them (otherwise they would end as zombies of PID 1).
if [ -z "${E2E_SUBREAPER:-}" ]; then
  export E2E_SUBREAPER=1
  exec timeout --foreground "${E2E_TIMEOUT:-900}" python3 -c '
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
os.execvp("bash", ["bash", sys.argv[1]])' "$0"
fi

BIN=$ROOT/target/debug/procnode
CP=$ROOT/tests/e2e/control-plane.sh
NODE=procnode-e2e
STATE=$(mktemp -d)
# Containers run as nobody: the directory above the state dir must let them through (procnode
# makes the state dir itself 0711).
chmod 711 "$STATE"
LOG=$STATE/procnode.log
PROCNODE_PID=
step() { echo "e2e: $*"; }
fail() {
  echo "e2e: FAILED: $*" >&2
  echo "--- procnode log (last 40 lines)" >&2; tail -40 "$LOG" >&2 || true
  # What the cluster thought: the node's conditions and taints, the pods, the last events.
  echo "--- node $NODE" >&2
  kubectl get node "$NODE" -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}){"\n"}{end}taints: {.spec.taints}{"\n"}' >&2 2>/dev/null || true
  echo "--- pods" >&2; kubectl get pods -A -o wide >&2 2>/dev/null || true
  echo "--- events (last 20)" >&2
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -20 >&2 || true
  exit 1
}

cleanup() {
  set +e
  if [ -n "$PROCNODE_PID" ] && kill -0 "$PROCNODE_PID" 2>/dev/null; then
    kill -TERM "$PROCNODE_PID"; wait "$PROCNODE_PID"
  fi
  bash "$CP" stop >/dev/null 2>&1
  # Whatever a failed step left: pods of a killed procnode and their supervisors (re-parented
  # to this shell, so only ours are touched).
  pkill -9 -f "e2e-marker" 2>/dev/null
  pkill -9 -P $$ -f "procnode(-shim)? shim" 2>/dev/null
  sleep 1
  rm -rf "$STATE"
}
trap cleanup EXIT

# DiskPressure off: the test machine's disk may well be over 90% full (a CI clone builds ~7 GB),
# and the control plane would then taint the node and schedule nothing on it.
start_procnode() {
  "$BIN" node --kubeconfig "$NODE_KUBECONFIG" --node-name "$NODE" --node-ip 127.0.0.1 --state-dir "$STATE/state" \
    --cgroup-parent procnode-e2e --backoff-initial 1s --object-refresh-interval 2s \
    --disk-pressure-percent 0 --kubelet-client-ca "$(bash "$CP" ca)" \
    --pod-root overlay --listen 127.0.0.1:13000 >>"$LOG" 2>&1 &
  PROCNODE_PID=$!
}

# wait_for DESCRIPTION SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
  local what=$1 limit=$2; shift 2
  local i
  for i in $(seq 1 $((limit * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  fail "timed out after ${limit}s waiting for $what"
}

count() { pgrep -fc "$1" || true; }
has_count() { [ "$(count "$1")" = "$2" ]; }

step "building and starting the control plane"
[ -x "$BIN" ] || fail "$BIN is missing: run cargo build first"
bash "$CP" build
eval "$(bash "$CP" start)"
export KUBECONFIG
kubectl version --short 2>/dev/null | sed 's/^/e2e:   /' || true

step "0. procnode's own identity: the ServiceAccount and ClusterRole of examples/node-rbac.yaml"
# The control plane authorizes with RBAC: procnode runs with no more than that role allows.
kubectl apply -f examples/node-rbac.yaml >/dev/null
wait_for "the procnode-node token" 30 bash -c \
  '[ -n "$(kubectl -n kube-system get secret procnode-node-token -o jsonpath={.data.token})" ]'
NODE_KUBECONFIG=$STATE/node.kubeconfig
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
node_token=$(kubectl -n kube-system get secret procnode-node-token -o jsonpath='{.data.token}' | base64 -d)
kubectl config --kubeconfig "$NODE_KUBECONFIG" set-cluster e2e --server "$server" --insecure-skip-tls-verify=true >/dev/null
kubectl config --kubeconfig "$NODE_KUBECONFIG" set-credentials procnode --token "$node_token" >/dev/null
kubectl config --kubeconfig "$NODE_KUBECONFIG" set-context e2e --cluster e2e --user procnode >/dev/null
kubectl config --kubeconfig "$NODE_KUBECONFIG" use-context e2e >/dev/null
[ "$(kubectl --kubeconfig "$NODE_KUBECONFIG" auth can-i watch pods -A 2>/dev/null || true)" = yes ] || fail "the role is not bound"
[ "$(kubectl --kubeconfig "$NODE_KUBECONFIG" auth can-i create deployments 2>/dev/null || true)" = no ] \
  || fail "the procnode-node identity can do more than its role"
step "   system:serviceaccount:kube-system:procnode-node"

step "1. the node registers and becomes Ready with the host's capacity"
start_procnode
wait_for "node $NODE to be Ready" 60 kubectl wait --for=condition=Ready "node/$NODE" --timeout=1s
cpus=$(kubectl get node "$NODE" -o jsonpath='{.status.capacity.cpu}')
mem=$(kubectl get node "$NODE" -o jsonpath='{.status.capacity.memory}')
[ "$cpus" = "$(nproc)" ] || fail "capacity cpu $cpus, host has $(nproc)"
host_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
[ "${mem%Ki}" = "$host_kib" ] || fail "capacity memory $mem, host has ${host_kib}Ki"
kubectl get lease -n kube-node-lease "$NODE" >/dev/null || fail "no node lease"
step "   Ready, cpu=$cpus memory=$mem, lease held"

step "2. a Job completes and kubectl logs shows its output"
kubectl apply -f examples/job.yaml >/dev/null
wait_for "job/hello to complete" 60 kubectl wait --for=condition=complete job/hello --timeout=1s
kubectl logs job/hello | grep -q "the answer is 42" || fail "kubectl logs job/hello: $(kubectl logs job/hello 2>&1)"
step "   complete; logs: $(kubectl logs job/hello | tr '\n' '|')"
# The events kubectl describe shows, recorded as the kubelet records them.
hello_pod=$(kubectl get pods -l job-name=hello -o jsonpath='{.items[0].metadata.name}')
reasons() {
  kubectl get events --field-selector "involvedObject.name=$1,source=kubelet" \
    -o jsonpath='{range .items[*]}{.reason}{" "}{end}'
}
wait_for "the Pulled, Created and Started events of $hello_pod" 20 bash -c \
  "r=\$(kubectl get events --field-selector involvedObject.name=$hello_pod -o jsonpath='{.items[*].reason}'); [[ \$r == *Pulled* && \$r == *Created* && \$r == *Started* ]]"
step "   events: $(reasons "$hello_pod")"

step "2b. Secret and ConfigMap references: env, envFrom and volumes"
kubectl create secret generic e2e-secret --from-literal=password=s3cret >/dev/null
kubectl create configmap e2e-config --from-literal=mode=fast --from-literal=level=7 >/dev/null
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: configured, labels: {team: e2e}}
spec:
  restartPolicy: Never
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  volumes:
  - {name: cfg, configMap: {name: e2e-config}}
  - {name: sec, secret: {secretName: e2e-secret}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
  - name: api-access
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
      - configMap: {name: kube-root-ca.crt, optional: true, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'echo "env=$PASSWORD/$CFG_mode/$CFG_level files=$(cat $PROCNODE_VOLUME_CFG/mode)/$(cat $PROCNODE_VOLUME_SEC/password) labels=$(cat $PROCNODE_VOLUME_INFO/labels) ns=$(cat $PROCNODE_VOLUME_API_ACCESS/namespace) token=$(cut -c1-3 $PROCNODE_VOLUME_API_ACCESS/token)"']
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: e2e-secret, key: password}}
    envFrom:
    - {prefix: CFG_, configMapRef: {name: e2e-config}}
    volumeMounts:
    - {name: cfg, mountPath: /etc/e2e-config}
    - {name: sec, mountPath: /etc/e2e-secret}
    - {name: info, mountPath: /etc/e2e-info}
    - {name: api-access, mountPath: /var/run/secrets/e2e-api-access}
EOF
wait_for "pod/configured to succeed" 60 bash -c '[ "$(kubectl get pod configured -o jsonpath={.status.phase})" = Succeeded ]'
out=$(kubectl logs configured)
# (A service-account token is a JWT: it starts with "eyJ".)
[ "$out" = 'env=s3cret/fast/7 files=fast/s3cret labels=team="e2e" ns=default token=eyJ' ] || fail "configured pod printed: $out"
step "   $out"

step "2c. a changed ConfigMap reaches the files of a running pod"
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: watcher}
spec:
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  volumes: [{name: cfg, configMap: {name: e2e-config}}]
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'while :; do cat $PROCNODE_VOLUME_CFG/mode; echo; sleep 0.5; done']
    volumeMounts: [{name: cfg, mountPath: /etc/e2e-config}]
EOF
wait_for "pod/watcher to run" 60 kubectl wait --for=condition=Ready pod/watcher --timeout=1s
kubectl patch configmap e2e-config -p '{"data":{"mode":"careful"}}' >/dev/null
wait_for "the new value in the pod's output" 30 bash -c 'kubectl logs watcher | grep -q careful'
step "   the pod read 'careful' without a restart"
followed=$( (timeout 3 kubectl logs -f watcher --tail=1 || true) | wc -l)
[ "$followed" -ge 3 ] || fail "kubectl logs -f gave $followed lines in 3 s"
step "   kubectl logs -f streamed $followed lines in 3 s"
summary=$(kubectl get --raw "/api/v1/nodes/$NODE/proxy/stats/summary")
echo "$summary" | python3 -c '
import json, sys
s = json.load(sys.stdin)
w = [p for p in s["pods"] if p["podRef"]["name"] == "watcher"][0]
assert s["node"]["nodeName"] and w["containers"][0]["memory"]["workingSetBytes"] > 0, s
' || fail "stats/summary through the API server: $summary"
step "   stats/summary through the API server's node proxy lists the pod's usage"
resource=$(kubectl get --raw "/api/v1/nodes/$NODE/proxy/metrics/resource")
echo "$resource" | grep -Eq '^container_memory_working_set_bytes\{container="main",namespace="default",pod="watcher"\} [1-9][0-9]* [0-9]+$' \
  && echo "$resource" | grep -Eq '^node_cpu_usage_seconds_total [0-9.e+]+ [0-9]+$' \
  || fail "metrics/resource through the API server: $resource"
step "   metrics/resource (what metrics-server scrapes) has the pod's working set"
# Straight to the kubelet port: nobody gets 401; the admin token (a TokenReview names its
# user, a SubjectAccessReview lets it in) gets the pods.
anon=$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:10250/pods)
[ "$anon" = 401 ] || fail "the kubelet API answered $anon to an anonymous caller"
forged=$(curl -sk -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer forged' https://127.0.0.1:10250/pods)
[ "$forged" = 401 ] || fail "the kubelet API answered $forged to a forged token"
token=$(kubectl config view --raw -o jsonpath='{.users[0].user.token}')
pods=$(curl -fsk -H "Authorization: Bearer $token" https://127.0.0.1:10250/pods || true)
echo "$pods" | grep -q '"watcher"' \
  || fail "the kubelet API refused the admin token"
step "   the kubelet port: anonymous 401, forged token 401, admin token served"

step "2d. the web API (--listen) serves the same runtime"
web=$(curl -fsS http://127.0.0.1:13000/getPods | python3 -c 'import json,sys; print(" ".join(sorted(p["metadata"]["name"] for p in json.load(sys.stdin))))')
cluster=$(kubectl get pods --field-selector spec.nodeName=$NODE -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')
[ "$web" = "$cluster" ] || fail "getPods [$web] vs the cluster [$cluster]"
step "   getPods: $web"
kubectl delete pod watcher configured --wait=false >/dev/null

step "2e. a volume at a path the host does not have (--pod-root overlay)"
[ ! -e /e2e-shared ] || fail "/e2e-shared exists on the host before the test"
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  restartPolicy: Never
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  volumes: [{name: data, emptyDir: {}}]
  initContainers:
  - name: write
    image: busybox
    command: [sh, -c, 'echo hello from init > /e2e-shared/msg']
    volumeMounts: [{name: data, mountPath: /e2e-shared}]
  containers:
  - name: read
    image: busybox
    command: [cat, /e2e-shared/msg]
    volumeMounts: [{name: data, mountPath: /e2e-shared}]
EOF
wait_for "pod/shared to succeed" 60 bash -c '[ "$(kubectl get pod shared -o jsonpath={.status.phase})" = Succeeded ]'
out=$(kubectl logs shared -c read)
[ "$out" = "hello from init" ] || fail "the shared pod printed: $out"
[ ! -e /e2e-shared ] || fail "/e2e-shared was made on the host"
step "   the main container read what its init container wrote; the host has no /e2e-shared"
kubectl delete pod shared --wait=false >/dev/null

step "2f. kubectl exec, cp, attach and port-forward (through the API server)"
kubectl apply -f examples/debugger-rbac.yaml >/dev/null
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  containers:
  - name: main
    image: busybox
    workingDir: /tmp
    env: [{name: FOO, value: from-the-pod}]
    # python3 -m http.server, with the marker in its own command line.
    command: [python3, -c, "import runpy, sys; sys.argv = ['e2e-marker-shell', '18081', '--bind', '127.0.0.1']; runpy.run_module('http.server', run_name='__main__')"]
EOF
wait_for "pod/shell to run" 60 kubectl wait --for=condition=Ready pod/shell --timeout=1s
wait_for "the http server in pod/shell" 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/18081'
# The debugger's token: pods/exec and pods/portforward, no nodes/proxy.
wait_for "the debugger's token" 30 bash -c \
  '[ -n "$(kubectl get secret debugger-token -o jsonpath={.data.token})" ]'
debugger=$(kubectl get secret debugger-token -o jsonpath='{.data.token}' | base64 -d)
set +e
out=$(kubectl --token "$debugger" exec shell -- sh -c 'echo $FOO; id -u; pwd; exit 3')
rc=$?
set -e
[ "$rc" = 3 ] || fail "kubectl exec exited $rc, expected 3 (output: $out)"
# The container's own uid (each pod runs as a uid of its own).
pod_uid=$(ps -o uid= -p "$(pgrep -f e2e-marker-shell | head -1)" | tr -d ' ')
[ "$out" = "$(printf 'from-the-pod\n%s\n/tmp' "$pod_uid")" ] || fail "kubectl exec printed: $out (the pod runs as $pod_uid)"
step "   exec: env, user, working directory: $(echo "$out" | tr '\n' ' ')and exit code $rc"
out=$(echo hi | kubectl exec -i shell -- cat)
[ "$out" = hi ] || fail "echo hi | kubectl exec -i shell -- cat printed: $out"
# A terminal: script(1) gives kubectl one of 45 rows and 123 columns.
# (What the terminal echoes of script's own input may come before it.)
out=$(script -qec "stty rows 45 cols 123; kubectl exec -it shell -- sh -c 'stty size'" /dev/null </dev/null | tr -d '\r')
echo "$out" | grep -q "45 123$" || fail "kubectl exec -it: stty size printed: $out"
step "   exec -i: stdin reaches cat; exec -it: stty size is $(echo "$out" | tail -1 | tr -cd '[:print:]')"
printf 'copied in and out\n' > "$STATE/cp-in.txt"
kubectl cp "$STATE/cp-in.txt" shell:/tmp/cp-in.txt
kubectl cp shell:/tmp/cp-in.txt "$STATE/cp-out.txt" >/dev/null
cmp "$STATE/cp-in.txt" "$STATE/cp-out.txt" || fail "kubectl cp: $(cat "$STATE/cp-out.txt" 2>&1)"
step "   cp: a file in and back out, unchanged"
kubectl --token "$debugger" port-forward pod/shell 18080:18081 >"$STATE/port-forward.log" 2>&1 &
forward=$!
wait_for "kubectl port-forward to listen" 30 grep -q "Forwarding from" "$STATE/port-forward.log"
page=$(curl -fsS http://127.0.0.1:18080/) || fail "curl through port-forward failed"
echo "$page" | grep -q "Directory listing" || fail "port-forward served: $page"
# A port no process of the pod listens on (the kubelet API's own): refused, not dialled.
kubectl port-forward pod/shell 18082:10250 >"$STATE/port-forward-host.log" 2>&1 &
forward_host=$!
wait_for "the second port-forward to listen" 30 grep -q "Forwarding from" "$STATE/port-forward-host.log"
if curl -fsS -m 5 http://127.0.0.1:18082/ >/dev/null 2>&1; then
  fail "port-forward reached the host's port 10250"
fi
wait_for "the refusal in kubectl's log" 10 grep -q "no process of the pod listens on port 10250" "$STATE/port-forward-host.log"
# (kubectl ends the refused one itself.)
kill "$forward" "$forward_host" 2>/dev/null || true; wait "$forward" "$forward_host" 2>/dev/null || true
step "   port-forward: the pod's page through 127.0.0.1:18080; the host's port 10250 refused"
# The same over SPDY, which an API server from 1.30 on speaks to every node (kubectl 1.30+
# speaks WebSocket unless told not to, and a 1.20 API server passes that through).
set +e
out=$(echo spdy-stdin | KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl exec -i shell -- sh -c 'cat; echo $FOO; exit 4')
rc=$?
set -e
[ "$rc" = 4 ] && [ "$out" = "$(printf 'spdy-stdin\nfrom-the-pod')" ] \
  || fail "kubectl exec over SPDY exited $rc, printed: $out"
out=$(script -qec "stty rows 21 cols 81; KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl exec -it shell -- sh -c 'stty size'" /dev/null </dev/null | tr -d '\r')
echo "$out" | grep -q "21 81$" || fail "kubectl exec -it over SPDY: stty size printed: $out"
KUBECTL_PORT_FORWARD_WEBSOCKETS=false kubectl port-forward pod/shell 18083:18081 >"$STATE/port-forward-spdy.log" 2>&1 &
forward=$!
wait_for "kubectl port-forward (SPDY) to listen" 30 grep -q "Forwarding from" "$STATE/port-forward-spdy.log"
# (The page is read whole first: grep -q leaving early would fail curl's write, and so the pipe.)
page=$(curl -fsS http://127.0.0.1:18083/) || fail "curl through port-forward over SPDY failed"
echo "$page" | grep -q "Directory listing" || fail "port-forward over SPDY served: $page"
kill "$forward" 2>/dev/null || true; wait "$forward" 2>/dev/null || true
step "   over SPDY too: exec -i (exit code 4), exec -it (stty size 21 81), port-forward"
# Straight to the kubelet port: the debugger has no nodes/proxy (403); the admin may (101).
upgrade() {
  curl -sk -o /dev/null -w '%{http_code}' -m 3 -X POST -H "Authorization: Bearer $1" \
    -H 'Connection: Upgrade' -H 'Upgrade: SPDY/3.1' -H 'X-Stream-Protocol-Version: v4.channel.k8s.io' \
    'https://127.0.0.1:10250/exec/default/shell/main?command=true&stdout=1' || true
}
[ "$(upgrade "$debugger")" = 403 ] || fail "the kubelet API let the debugger (no nodes/proxy) exec"
[ "$(upgrade "$token")" = 101 ] || fail "the kubelet API refused the admin's exec: $(upgrade "$token")"
step "   the kubelet port: exec without nodes/proxy 403, with it 101"
# kubectl attach to a pod with stdin and a terminal: what is typed reaches its shell.
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: console}
spec:
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  containers:
  - {name: main, image: busybox, stdin: true, tty: true, command: [sh, -c, ': e2e-marker-console; exec sh']}
EOF
wait_for "pod/console to run" 60 kubectl wait --for=condition=Ready pod/console --timeout=1s
# (The shell then exits, which ends the session: the container restarts, as its policy says.)
out=$( (sleep 3; echo 'echo attached-$((6*7))'; sleep 2; echo exit; sleep 2) \
  | timeout 30 script -qec "kubectl attach -it console" /dev/null | tr -d '\r' || true)
echo "$out" | grep -q "attached-42" || fail "kubectl attach -it console printed: $out"
kubectl delete pod console --wait=false >/dev/null
step "   attach -it: a line typed reached the pod's shell (attached-42)"
# A client that goes away takes its process with it.
kubectl exec shell -- sh -c ': e2e-marker-exec; sleep 300' &
execing=$!
wait_for "the exec'd process" 30 has_count "e2e-marker-exec" 1
kill "$execing"; wait "$execing" 2>/dev/null || true
wait_for "the exec'd process to be killed with its session" 30 has_count "e2e-marker-exec" 0
kubectl delete pod shell --wait=true >/dev/null
has_count "e2e-marker-shell" 0 || fail "pod/shell's process outlived it"
step "   a client that leaves: its process killed; no exec'd process left"
# What kubectl spoke (kubectl 1.30+ tries WebSocket first; a 1.20 API server passes it through).
step "   protocols: $(grep -oE '(exec|attach|port-forward) pod=[^ ]+ protocol="[^"]*"' "$LOG" \
  | awk '{print $1, $3}' | sort -u | tr '\n' ';')"

step "3. a Deployment scaled 1 -> 5 -> 0"
# examples/deployment.yaml, each replica's shell marked for counting.
sed 's/trap /: e2e-marker; trap /' examples/deployment.yaml | kubectl apply -f - >/dev/null
for n in 1 5 0; do
  kubectl scale deployment/ticker --replicas=$n >/dev/null
  wait_for "$n ticker processes" 60 has_count "e2e-marker" "$n"
  wait_for "$n ticker pods" 60 bash -c "[ \"\$(kubectl get pods -l app=ticker --no-headers 2>/dev/null | wc -l)\" = $n ]"
  step "   replicas=$n: $(count e2e-marker) processes"
done

step "4. kubectl delete pod stops the process within its grace period"
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  containers: [{name: main, image: busybox, command: [sh, -c, ": e2e-marker-stubborn; trap '' TERM; while :; do sleep 1; done"]}]
EOF
wait_for "pod/stubborn to run" 60 kubectl wait --for=condition=Ready pod/stubborn --timeout=1s
began=$(date +%s)
kubectl delete pod stubborn --wait=true >/dev/null
took=$(( $(date +%s) - began ))
has_count "e2e-marker-stubborn" 0 || fail "the pod's process survived its deletion"
[ "$took" -le 13 ] || fail "delete took ${took}s for a 3 s grace period"
wait_for "a Killing event for pod/stubborn" 20 bash -c \
  "kubectl get events --field-selector involvedObject.name=stubborn,reason=Killing -o name | grep -q ."
step "   gone after ${took}s (grace 3 s, TERM ignored)"

step "5. a failing command shows Error with its exit code"
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: failing}
spec:
  restartPolicy: Never
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  containers: [{name: main, image: busybox, command: [sh, -c, "echo about to fail; exit 3"]}]
EOF
wait_for "pod/failing to fail" 60 bash -c '[ "$(kubectl get pod failing -o jsonpath={.status.phase})" = Failed ]'
line=$(kubectl get pod failing --no-headers)
echo "$line" | grep -q " Error " || fail "kubectl get pod failing: $line"
code=$(kubectl get pod failing -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
[ "$code" = 3 ] || fail "exit code $code, expected 3"
step "   $line (exit code $code)"
# A readiness probe that always fails: one Unhealthy event, its count rising with each failure.
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  nodeSelector: {type: virtual-kubelet}
  tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
    readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
EOF
unhealthy() {
  kubectl get events --field-selector involvedObject.name=unready,reason=Unhealthy -o jsonpath="$1"
}
wait_for "an Unhealthy event counted at least 3 times" 60 bash -c \
  '[ "$(kubectl get events --field-selector involvedObject.name=unready,reason=Unhealthy -o jsonpath={.items[0].count})" -ge 3 ]'
[ "$(unhealthy '{range .items[*]}x{end}')" = x ] \
  || fail "repeated probe failures made several events instead of one counted"
step "   unready: Unhealthy \"$(unhealthy '{.items[0].message} (x{.items[0].count})')\""
kubectl delete pod unready --wait=false >/dev/null

step "6. procnode killed with SIGKILL and started again loses no pod"
kubectl scale deployment/ticker --replicas=2 >/dev/null
wait_for "2 ticker processes" 60 has_count "e2e-marker" 2
cat <<'EOF' | kubectl apply -f - >/dev/null
apiVersion: batch/v1
kind: Job
metadata: {name: while-down}
spec:
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {type: virtual-kubelet}
      tolerations: [{key: virtual-kubelet.io/provider, operator: Exists}]
      containers: [{name: main, image: busybox, command: [sh, -c, ": e2e-marker-job; sleep 6; echo finished while procnode was down"]}]
EOF
wait_for "the job's process" 60 has_count "e2e-marker-job" 1
before=$(kubectl get pods -l app=ticker -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
kill -9 "$PROCNODE_PID"; wait "$PROCNODE_PID" 2>/dev/null || true
sleep 8
has_count "e2e-marker" 2 || fail "the Deployment's processes did not outlive procnode"
has_count "e2e-marker-job" 0 || fail "the job should have finished while procnode was down"
start_procnode
wait_for "job/while-down to complete" 60 kubectl wait --for=condition=complete job/while-down --timeout=1s
kubectl logs job/while-down | grep -q "finished while procnode was down" || fail "job output lost: $(kubectl logs job/while-down 2>&1)"
after=$(kubectl get pods -l app=ticker -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
[ "$before" = "$after" ] || fail "ticker pods changed: before [$before] after [$after]"
restarts=$(kubectl get pods -l app=ticker -o jsonpath='{.items[*].status.containerStatuses[0].restartCount}')
[ "$restarts" = "0 0" ] || fail "ticker restart counts: $restarts"
has_count "e2e-marker" 2 || fail "ticker processes after the restart: $(count e2e-marker)"
for p in $after; do
  started=$(kubectl get events --field-selector "involvedObject.name=$p,reason=Started" -o name | wc -l)
  [ "$started" = 1 ] || fail "pod $p has $started Started events after procnode's restart (want 1)"
done
step "   same pods, not restarted (one Started event each); the job's exit and output kept"

# Nothing procnode asked for was refused: the role in examples/node-rbac.yaml is enough.
if grep -qiE "forbidden|\b403\b" "$LOG"; then
  fail "the API server refused procnode something: $(grep -iE 'forbidden|\b403\b' "$LOG" | head -3)"
fi
step "   procnode's log shows no refused call: the role is enough"

step "cleaning up"
kubectl delete deployment ticker --wait=false >/dev/null
kubectl delete job hello while-down --wait=false >/dev/null
kubectl delete pod failing --wait=false >/dev/null
wait_for "every pod to be gone" 60 bash -c '[ -z "$(kubectl get pods --no-headers 2>/dev/null)" ]'
has_count "e2e-marker" 0 || fail "processes left after their pods were deleted"
kill -TERM "$PROCNODE_PID"; wait "$PROCNODE_PID" || fail "procnode exited non-zero on SIGTERM"
PROCNODE_PID=
step "7. an unauthorised or unreachable API server: clear errors, retries, no crash"
sed -E 's/(token: *)[^} ]+/\1wrong-token/' "$KUBECONFIG" > "$STATE/bad-token.kubeconfig"
sed 's#https://127.0.0.1:6443#https://127.0.0.1:1#' "$KUBECONFIG" > "$STATE/unreachable.kubeconfig"
for kind in bad-token unreachable; do
  "$BIN" node --kubeconfig "$STATE/$kind.kubeconfig" --node-name "$NODE-$kind" \
    --state-dir "$STATE/$kind" --kubelet-port 0 >"$STATE/$kind.log" 2>&1 &
  pid=$!
  if [ $kind = bad-token ]; then want="unauthorised (401)"; else want="unreachable"; fi
  wait_for "procnode to report $want" 30 grep -q "$want" "$STATE/$kind.log"
  sleep 2
  kill -0 "$pid" || fail "procnode ($kind) exited instead of retrying"
  kill -TERM "$pid"; wait "$pid" || fail "procnode ($kind) exited non-zero on SIGTERM"
  step "   $kind: $(grep -oE "API server (unauthorised|unreachable).*" "$STATE/$kind.log" | head -1 | cut -c1-140)"
done

step "passed"
