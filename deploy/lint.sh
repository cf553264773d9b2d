#!/usr/bin/env bash
# Lints the deployment files: the Helm chart (helm lint; rendered manifests validated against the
# Kubernetes schemas bundled in the kubernetes-validate package), the compose file's YAML, and the
# Prometheus rules. Installs helm from source with the Go toolchain (cached in ~/go/bin) and
# kubernetes-validate from PyPI if missing.
set -euo pipefail
cd "$(dirname "$0")"

export PATH="$HOME/go/bin:$PATH"
if ! command -v helm >/dev/null 2>&1; then
  echo "lint: building helm v3.22.0 with go install (first run only)" >&2
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
python3 -c 'import kubernetes_validate' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check kubernetes-validate \
  || python3 -m pip install -q --disable-pip-version-check --break-system-packages kubernetes-validate

admin=(--set secrets.GATEWAY_ADMIN_TOKEN=lint-admin-token-0123456789)
helm lint helm/inquiry-gateway "${admin[@]}"
# Without an admin token the chart refuses to render.
if helm template demo helm/inquiry-gateway >/dev/null 2>&1; then
  echo "lint: the chart rendered without secrets.GATEWAY_ADMIN_TOKEN" >&2
  exit 1
fi
rendered="$(mktemp)"
trap 'rm -f "$rendered" "$rendered.tls" "$rendered.toml"' EXIT
helm template demo helm/inquiry-gateway "${admin[@]}" > "$rendered"
python3 - "$rendered" <<'PY'
import sys, yaml, kubernetes_validate
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for doc in docs:
    kubernetes_validate.validate(doc, "1.31", strict=True)
kinds = sorted(d["kind"] for d in docs)
expected = ["ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service", "Service", "StatefulSet"]
assert kinds == expected, kinds
print(f"lint: {len(docs)} rendered manifests valid against Kubernetes 1.31: {', '.join(kinds)}")
# The autoscaler owns the replica count (an upgrade must not reset it); new secrets roll the pods.
sts = next(d for d in docs if d["kind"] == "StatefulSet")
assert "replicas" not in sts["spec"], sts["spec"]
assert "checksum/secret" in sts["spec"]["template"]["metadata"]["annotations"]
config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.toml"]
open(sys.argv[1] + ".toml", "w").write(config)
# The replicas find each other through the chart's headless Service, by its rendered name.
headless = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
assert headless["spec"].get("publishNotReadyAddresses") is True, headless["spec"]
assert f'peers = ["http://{headless["metadata"]["name"]}:8080"]' in config, (headless["metadata"]["name"], config)
print(f"lint: [cluster] peers names the headless Service {headless['metadata']['name']}")
PY
# With certificates mounted and HTTPS probes, the StatefulSet still validates and carries both.
helm template demo helm/inquiry-gateway "${admin[@]}" --set adminScheme=HTTPS \
  --set 'tlsSecrets[0].name=ingest,tlsSecrets[0].secretName=gw-tls,tlsSecrets[1].name=kafka,tlsSecrets[1].secretName=kafka-ca' \
  > "$rendered.tls"
python3 - "$rendered.tls" <<'PY'
import sys, yaml, kubernetes_validate
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for doc in docs:
    kubernetes_validate.validate(doc, "1.31", strict=True)
pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
container = pod["containers"][0]
assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS", container["readinessProbe"]
annotations = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
assert annotations["prometheus.io/scheme"] == "https", annotations
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
assert mounts["tls-ingest"] == "/etc/inquiry-gateway-tls/ingest" and mounts["tls-kafka"] == "/etc/inquiry-gateway-tls/kafka", mounts
secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
assert secrets == {"tls-ingest": "gw-tls", "tls-kafka": "kafka-ca"}, secrets
print("lint: the chart with tlsSecrets and HTTPS probes renders valid manifests")
PY
rm -f "$rendered.tls"
# The chart's and the compose stack's gateway configs pass the gateway's own check.
if [[ -n "${GATEWAY_BIN:-}" ]]; then
  GATEWAY_API_KEY=lint-key-0123456789 GATEWAY_KEK=Q0hBTkdFLU1FLUNIQU5HRS1NRS1DSEFOR0UtTUUtMDA= \
    GATEWAY_INDEX_KEY=lint-index-key-0123456789-0123456789 GATEWAY_ADMIN_TOKEN=lint-admin-token-0123456789 \
    "$GATEWAY_BIN" check --config "$rendered.toml"
  GATEWAY_API_KEY=lint-key-0123456789 GATEWAY_ADMIN_TOKEN=lint-admin-token-0123456789 \
    "$GATEWAY_BIN" check --config compose/gateway.toml
fi
rm -f "$rendered.toml"
python3 -c 'import sys, yaml; c = yaml.safe_load(open("compose/docker-compose.yml")); assert {"gateway", "kafka", "scylla", "prometheus", "grafana"} <= set(c["services"]); print("lint: compose file parses, services:", ", ".join(c["services"]))'
promtool check rules prometheus/alerts.yml >/dev/null && promtool test rules prometheus/alerts.test.yml >/dev/null
echo "lint: prometheus rules ok"
