#!/usr/bin/env bash
# `make bench-tls`: what TLS on the data plane costs (issue 28). Four gateways side by side, all
# pinned to CPU 0 and loaded one at a time: plain HTTP (8080), TLS with an ECDSA P-256 certificate
# (8090), TLS with an RSA 2048 one (8100), and mTLS (8110: an ECDSA certificate and `client_certs`
# required, the client's X.509-SVID mapped to the bench identity), from bench/gateway.yaml. In
# alternating bursts (plain, ecdsa, rsa, plain, ...), at c = 16:
#   keepalive  wrk, non-streaming chat on kept connections;
#   close      wrk with `Connection: close`, a new connection per request; wrk keeps its TLS session
#              across reconnects (SSL_clear), so these handshakes are resumed ones;
#   full       16 `openssl s_time -new` clients, GET /healthz on a new connection with a new session
#              each time: full handshakes (TLS sides only; on the mTLS side each client shows its SVID,
#              which the gateway verifies and maps to its identity);
#   resumed    the same with `-reuse`.
# wrk cannot show a client certificate, so the mTLS side has handshake rows only.
# Per burst: req/s (connections/s for s_time) and the gateway's CPU microseconds per request or
# handshake; at the end the median ratio of each TLS side to plain in the same round.
# Run it inside its own network namespace so its fixed ports cannot meet another bench's:
#   unshare -n sh -c 'ip link set lo up && make bench-tls'
# Env: ROUNDS (default 5), CONC (default 16), SECONDS_EACH (default 3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
secs=${SECONDS_EACH:-3}; conc=${CONC:-16}; hz=$(getconf CLK_TCK)
start_upstream

# a CA and one leaf per key type, made with trustme (the test extras)
mkdir -p .sluice/tls
python - <<'PY'
import trustme
for kind, key_type in (("ecdsa", trustme.KeyType.ECDSA), ("rsa", trustme.KeyType.RSA)):
    leaf = trustme.CA(key_type=key_type).issue_cert("127.0.0.1", key_type=key_type)
    leaf.cert_chain_pems[0].write_to_path(f".sluice/tls/{kind}.pem")
    leaf.private_key_pem.write_to_path(f".sluice/tls/{kind}-key.pem")
PY
# mTLS: a CA made with cryptography as the tests make theirs (tests/x509_ca.py), its server leaf, and one
# X.509-SVID for the clients
PYTHONPATH=tests python - <<'PY'
import shutil
from pathlib import Path
from x509_ca import TestCA
ca = TestCA(Path(".sluice/tls"), "mtls-ca")
for name, leaf in (("mtls", ca.issue(cn="sluice", ip="127.0.0.1")),
                   ("client", ca.issue(spiffe_id="spiffe://bench.example/ns/bench/sa/load"))):
    shutil.copy(leaf.cert_file, f".sluice/tls/{name}.pem")
    shutil.copy(leaf.key_file, f".sluice/tls/{name}-key.pem")
PY
mtls_certs="client_certs: {mode: require, ca_files: [.sluice/tls/mtls-ca.pem], rules: [{match: {trust_domain: bench.example}, identity: bench}]}"
for kind in ecdsa rsa mtls; do
  extra=""; [ "$kind" = mtls ] && extra=", $mtls_certs"
  sed "s|data_plane: {host: 127.0.0.1, port: 8080}|data_plane: {host: 127.0.0.1, port: 8080, tls: {cert_file: .sluice/tls/$kind.pem, key_file: .sluice/tls/$kind-key.pem$extra}}|" \
    bench/gateway.yaml > ".sluice/gateway-tls-$kind.yaml"
done
start_gateway bench/gateway.yaml tls-plain.log 0; pid_plain=$last_gw
start_gateway .sluice/gateway-tls-ecdsa.yaml tls-ecdsa.log 10; pid_ecdsa=$last_gw
start_gateway .sluice/gateway-tls-rsa.yaml tls-rsa.log 20; pid_rsa=$last_gw
start_gateway .sluice/gateway-tls-mtls.yaml tls-mtls.log 30; pid_mtls=$last_gw
declare -A url=([plain]=http://127.0.0.1:8080 [ecdsa]=https://127.0.0.1:8090 [rsa]=https://127.0.0.1:8100
                [mtls]=https://127.0.0.1:8110)
declare -A pid=([plain]=$pid_plain [ecdsa]=$pid_ecdsa [rsa]=$pid_rsa [mtls]=$pid_mtls)
# what an s_time client shows: its SVID on the mTLS side, nothing elsewhere
declare -A client=([ecdsa]="" [rsa]="" [mtls]="-cert .sluice/tls/client.pem -key .sluice/tls/client-key.pem")
out=.sluice/tls.txt
: > "$out"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

burst() {  # $1 side, $2 keepalive|close
  local t0 t1 res rps bad extra=()
  [ "$2" = close ] && extra=(-H "Connection: close")
  t0=$(cpu_ticks "${pid[$1]}")
  res=$(taskset -c "${LOAD_CPU:-1}" wrk -t1 -c"$conc" -d"${secs}s" "${extra[@]}" -s "$shared/chat.lua" \
        "${url[$1]}/v1/chat/completions")
  t1=$(cpu_ticks "${pid[$1]}")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$res"); bad=${bad:-0}
  errs=$(awk '/Socket errors/ {print}' <<<"$res")
  [ "$bad" = 0 ] || { echo "$1 ($2) answered non-2xx: $res" >&2; exit 1; }
  awk -v s="$1" -v k="$2" -v r="$rps" -v a="$t0" -v b="$t1" -v hz="$hz" -v d="$secs" -v e="$errs" \
    'BEGIN {printf "%-6s %-9s %8.0f %8.1f %s\n", s, k, r, (b - a) / hz * 1e6 / (r * d), e}' | tee -a "$out"
}

handshakes() {  # $1 side, $2 -new|-reuse: $conc s_time clients at once on CPU 1
  local t0 t1 n i pids=() port=${url[$1]##*:}
  t0=$(cpu_ticks "${pid[$1]}")
  for i in $(seq "$conc"); do
    # shellcheck disable=SC2086  # ${client[$1]}: the words of -cert FILE -key FILE, or none
    taskset -c "${LOAD_CPU:-1}" openssl s_time -connect "127.0.0.1:$port" "$2" -time "$secs" -www /healthz \
      ${client[$1]} > ".sluice/stime-$i.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  t1=$(cpu_ticks "${pid[$1]}")
  n=$(cat .sluice/stime-*.txt | awk '/connections in .* real seconds/ {n += $1} END {print n + 0}')
  [ "$n" -gt 0 ] || { echo "$1: s_time made no connection" >&2; cat .sluice/stime-1.txt >&2; exit 1; }
  awk -v s="$1" -v k="${2#-}" -v n="$n" -v a="$t0" -v b="$t1" -v hz="$hz" -v d="$secs" \
    'BEGIN {printf "%-6s %-9s %8.0f %8.1f\n", s, (k == "new" ? "full" : "resumed"), n / d, (b - a) / hz * 1e6 / n}' | tee -a "$out"
}

for side in plain ecdsa rsa; do burst "$side" keepalive >/dev/null; done  # warm pools and caches
: > "$out"
printf '%-6s %-9s %8s %8s\n' side conn req/s cpu_us/req
for round in $(seq "${ROUNDS:-5}"); do
  for kind in keepalive close; do
    for side in plain ecdsa rsa; do burst "$side" "$kind"; done
  done
  for kind in -new -reuse; do
    for side in ecdsa rsa mtls; do handshakes "$side" "$kind"; done
  done
done

echo "median over rounds of (side req/s) / (plain req/s) in the same round:"
for kind in keepalive close; do
  for side in ecdsa rsa; do
    awk -v k="$kind" -v s="$side" '$2 == k && $1 == "plain" {p[++n] = $3} $2 == k && $1 == s {t[++m] = $3}
      END {for (i = 1; i <= n; i++) r[i] = t[i] / p[i]; asort(r); printf "%-9s %-6s %.3f\n", k, s, r[int((n + 1) / 2)]}' "$out"
  done
done
echo "median over rounds of the gateway's CPU per handshake, mTLS / TLS with the same ECDSA certificate:"
for kind in full resumed; do
  awk -v k="$kind" '$2 == k && $1 == "ecdsa" {e[++n] = $4} $2 == k && $1 == "mtls" {m[++j] = $4}
    END {for (i = 1; i <= n; i++) r[i] = m[i] / e[i]; asort(r); printf "%-9s mtls/ecdsa %.3f\n", k, r[int((n + 1) / 2)]}' "$out"
done
