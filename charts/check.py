#!/usr/bin/env python3
"""Checks the Helm chart with Helm's own engine (the helm-python-sdk package embeds it) and keeps
the pre-rendered manifest for users without Helm in sync.

    python3 charts/check.py          # lint, render every option, compare with procnode.yaml
    python3 charts/check.py --write  # re-render procnode.yaml after changing the chart
"""
import pathlib
import sys

import helm_python
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CHART = HERE / "procnode"
MANIFEST = HERE / "procnode.yaml"
RELEASE, NAMESPACE = "procnode", "kube-system"
# The order `helm install` applies kinds in.
KIND_ORDER = ["Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole",
              "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]

# Every optional branch of the templates, rendered once so that none is broken.
VARIANTS = {
    "host namespaces": {"procnode": {"hostPID": True, "hostNetwork": True}},
    "kubelet TLS": {"broker": {"tlsSecret": "procnode-kubelet-tls"}},
    "state on the host": {"procnode": {"stateHostPath": "/var/lib/procnode"}},
    "one namespace": {"podNamespace": "batch"},
    "existing service account": {"serviceAccount": {"create": False, "name": "vk"}},
    "settings and scheduling": {
        "procnode": {"settings": {"allowed-uids": "1000-1999", "max-pods": 20}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
    },
}


def render(values=None):
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        for doc in text.split("\n---\n"):
            body = doc.strip("\n")
            parsed = yaml.safe_load(body)
            if parsed:
                docs.append((parsed["kind"], path, body, parsed))
    docs.sort(key=lambda d: (KIND_ORDER.index(d[0]) if d[0] in KIND_ORDER else 99, d[1]))
    return docs


def manifest(docs):
    header = ("# Generated from charts/procnode by `python3 charts/check.py --write` (the same as\n"
              f"# `helm template {RELEASE} charts/procnode --namespace {NAMESPACE}`). Do not edit.\n")
    return header + "".join(f"---\n# Source: {src}\n{body}\n" for _, src, body, _ in docs)


def main():
    problems = []
    report = helm_python.lint(str(CHART), strict=True, namespace=NAMESPACE)
    for m in report["messages"]:
        if m["severity"] >= 2:
            problems.append(f"lint: {m['path']}: {m['error']}")
    problems += [f"lint: {e}" for e in report["errors"]]

    docs = render()
    kinds = sorted(d[0] for d in docs)
    if kinds != ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]:
        problems.append(f"default render has kinds {kinds}")
    for name, values in VARIANTS.items():
        try:
            for kind, src, _, parsed in render(values):
                if not parsed.get("apiVersion") or not parsed.get("metadata", {}).get("name"):
                    problems.append(f"variant {name!r}: {src} ({kind}) lacks apiVersion or name")
        except Exception as e:  # a template error names the variant that broke it
            problems.append(f"variant {name!r}: {e}")

    # Settings become flags procnode accepts: true bare, false as =false, lists repeated.
    settings = {"stop-pods-on-exit": True, "log-files": False, "max-pods": 20,
                "host-path-prefix": ["/srv/a", "/srv/b"]}
    try:
        deployment = next(p for k, _, _, p in render({"procnode": {"settings": settings}})
                          if k == "Deployment")
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                         if c["name"] == "procnode")
        args = container.get("args", []) + container.get("command", [])
        want = ["--stop-pods-on-exit", "--log-files=false", "--max-pods=20",
                "--host-path-prefix=/srv/a", "--host-path-prefix=/srv/b"]
        missing = [w for w in want if w not in args]
        if missing or any("=true" in a for a in args):
            problems.append(f"settings render as {args}, wanted {want}")
    except Exception as e:
        problems.append(f"settings: {e}")

    text = manifest(docs)
    if "--write" in sys.argv:
        MANIFEST.write_text(text)
        print(f"wrote {MANIFEST.relative_to(HERE.parent)}")
    elif not MANIFEST.exists() or MANIFEST.read_text() != text:
        problems.append("charts/procnode.yaml is out of date: run python3 charts/check.py --write")

    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"chart ok: lint clean, {1 + len(VARIANTS)} renders, procnode.yaml in sync")


if __name__ == "__main__":
    main()
