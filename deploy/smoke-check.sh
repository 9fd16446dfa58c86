#!/usr/bin/env bash
# After a rollout (the deploy job in .github/workflows/ci.yml, or by hand): exit 0 when every
# Deployment is Available with all its replicas ready and one signed test webhook went through
# the ingress, the stream and the recorder to `done`; exit 1 otherwise, which makes the deploy
# job roll every service back.
#
# The webhook is a broadcast event of a type no rule handles (eventType dfm_smoke_check), so it
# is recorded `done` (outcome ignored) and writes nothing to a vendor. It is sent from inside a
# running jobs pod with `dfm send`, signed with that pod's own TEXTING/BROADCAST secret, and its
# status read from the admin API with the pod's DF_ADMIN_SECRET: no secret leaves the cluster
# or reaches this script's output. Needs the broadcast source configured.
#
#   deploy/smoke-check.sh [namespace]     (SMOKE_TIMEOUT_S, default 120)
set -euo pipefail
NS=${1:-dfm}
TIMEOUT=${SMOKE_TIMEOUT_S:-120}
SERVICES="ingress gateway recorder ghl-sync aloware-sync verity-sync jobs scheduler console"
INGRESS_URL="http://ingress.${NS}.svc:3002"

for d in $SERVICES; do
    kubectl -n "$NS" wait --for=condition=Available "deployment/$d" --timeout="${TIMEOUT}s"
    ready=$(kubectl -n "$NS" get "deployment/$d" -o jsonpath='{.status.readyReplicas}')
    want=$(kubectl -n "$NS" get "deployment/$d" -o jsonpath='{.spec.replicas}')
    if [ "${ready:-0}" -lt "${want:-1}" ]; then
        echo "smoke: $d has ${ready:-0} of ${want} replicas ready" >&2
        exit 1
    fi
done

run_id="smoke-$(date -u +%Y%m%dT%H%M%SZ)-$RANDOM"
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
body="{\"broadcastId\": \"${run_id}\", \"eventType\": \"dfm_smoke_check\", \"timestamp\": \"${stamp}\"}"
answer=$(printf '%s' "$body" | kubectl -n "$NS" exec -i deployment/jobs -- \
    dfm send /dev/stdin --source broadcast --url "$INGRESS_URL") || {
    echo "smoke: the ingress refused the test webhook: ${answer:-no answer}" >&2
    exit 1
}
event_id=$(printf '%s' "${answer#* }" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("id", ""))')
if [ -z "$event_id" ]; then
    echo "smoke: the ingress answered without an event id: $answer" >&2
    exit 1
fi
echo "smoke: webhook accepted as event $event_id"

# poll the admin API from the same pod (its secret stays there); the first value of
# DF_ADMIN_SECRET when several are configured for rotation
poll='import json, os, sys, urllib.request
secret = os.environ["DF_ADMIN_SECRET"].split(",")[0].strip()
request = urllib.request.Request(sys.argv[1], headers={"X-DF-ADMIN-SECRET": secret})
with urllib.request.urlopen(request, timeout=5) as response:
    print(json.load(response).get("status", ""))'
deadline=$((SECONDS + TIMEOUT))
status=""
while [ $SECONDS -lt $deadline ]; do
    status=$(kubectl -n "$NS" exec deployment/jobs -- python -c "$poll" \
        "${INGRESS_URL}/api/admin/events/${event_id}?eventSource=broadcast" 2>/dev/null || true)
    case "$status" in
        done) echo "smoke: event $event_id is done"; exit 0 ;;
        error|dead|quarantined) break ;;
    esac
    sleep 2
done
echo "smoke: event $event_id is '${status:-not found}' after ${TIMEOUT}s, expected done" >&2
exit 1
