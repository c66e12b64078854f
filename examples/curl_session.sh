#!/usr/bin/env bash
# A partner system's session with Liaison over HTTP/JSON, with curl and jq.
#
#   LIAISON_HTTP=http://localhost:50051 LIAISON_API_KEY=lsk_... bash curl_session.sh
#
# Creates a customer, reads it, changes one field with its etag, shows what a stale
# etag and a bad field get (AIP-193 JSON with the HTTP status of the code), lists the
# organization's customers page by page, logs a call, and reads its event feed as
# Server-Sent Events for two seconds. Exits non-zero at the first unexpected answer.
set -euo pipefail
HUB="${LIAISON_HTTP:-http://localhost:50051}"
AUTH="Authorization: Bearer ${LIAISON_API_KEY:?set LIAISON_API_KEY}"

# `call METHOD PATH [BODY]`: the answer on stdout; fails on an error status, printing it.
call() {
  curl -sS --fail-with-body -X "$1" "$HUB$2" -H "$AUTH" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
# `refused METHOD PATH [BODY]`: the error's HTTP status and canonical code.
refused() {
  curl -sS -o /tmp/liaison-error.$$ -w '%{http_code} ' -X "$1" "$HUB$2" -H "$AUTH" ${3:+-d "$3"}
  jq -r '.error.status + ": " + .error.message' /tmp/liaison-error.$$
  rm -f /tmp/liaison-error.$$
}

C=$(call POST /v1/customers '{"kind": "COMPANY", "legalName": "Curl & Sons Ltd", "tags": ["prospect"]}')
NAME=$(jq -r .name <<<"$C")
ETAG=$(jq -r .etag <<<"$C")
echo "created $NAME ($(jq -r .displayName <<<"$C"))"

call GET "/v1/$NAME" | jq -c '{name, displayName, tags}'
U=$(call PATCH "/v1/$NAME?updateMask=tags" "{\"tags\": [\"customer\"], \"etag\": $(jq -R <<<"$ETAG")}")
echo "updated tags: $(jq -c .tags <<<"$U")"

echo "stale etag: $(refused PATCH "/v1/$NAME?updateMask=tags" "{\"tags\": [\"x\"], \"etag\": $(jq -R <<<"$ETAG")}")"
echo "bad field: $(refused POST /v1/customers '{"kind": "COMPANY", "legalName": "X", "emails": [{"address": "not an email"}]}')"

TOKEN=""; COUNT=0
while :; do
  PAGE=$(call GET "/v1/customers?pageSize=2&pageToken=$TOKEN")
  COUNT=$((COUNT + $(jq '.customers // [] | length' <<<"$PAGE")))
  TOKEN=$(jq -r '.nextPageToken // empty' <<<"$PAGE")
  [ -n "$TOKEN" ] || break
done
echo "listed $COUNT customers"

call POST "/v1/$NAME/interactions" "{\"type\": \"CALL\", \"direction\": \"OUTBOUND\", \"visibility\": \"SHARED\",
  \"occurTime\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"summary\": \"Intro call\"}" \
  | jq -r '"logged " + .name'

curl -sSN --max-time 2 "$HUB/v1/events:watch?eventTypes=customer.*&eventTypes=interaction.*" -H "$AUTH" \
  > /tmp/liaison-events.$$ || true
echo "events: $(grep '^event: ' /tmp/liaison-events.$$ | cut -d' ' -f2 | sort | uniq -c | tr -s ' ' | paste -sd,)"
rm -f /tmp/liaison-events.$$
