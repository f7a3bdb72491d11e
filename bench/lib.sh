# Shared by the bench scripts: start the canned upstream and sluice pinned to CPU 0, wait
# until it is ready, and stop everything on exit. Sets $gw (pid of the first gateway) and $dir.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
cd "$root"

need() { command -v "$1" >/dev/null || { echo "installing $1"; (apt-get update -qq && apt-get install -y -qq "$1") >/dev/null; }; }
need nginx
need wrk
need curl
command -v sluice >/dev/null || { echo "sluice is not on PATH: run via make" >&2; exit 1; }

gateways=()

start_upstream() {
  export BENCH_KEY=${BENCH_KEY:-$(sluice keys generate --env prod)}
  export SLUICE_ADMIN_KEY=${SLUICE_ADMIN_KEY:-$(sluice keys generate --admin)}
  mkdir -p .sluice
  dir=$("$shared/start-mock-upstream" | tail -n 1)
  trap stop_stack EXIT
}

# $1: config, $2: log name under .sluice/, $3: port offset (0: data 8080, control 8081),
# $4: extra environment for this gateway only ("NAME=value ...").
# A non-zero offset runs a copy of the config on other ports with its own database.
# Sets $last_gw to its pid.
start_gateway() {
  local config=$1 off=${3:-0}
  if [ "$off" != 0 ]; then
    sed -e "s/port: 8080/port: $((8080 + off))/; s/port: 8081/port: $((8081 + off))/" \
        -e "s|\.sluice/bench\.db|.sluice/bench-$off.db|" "$1" > ".sluice/config-$off.yaml"
    config=.sluice/config-$off.yaml
  fi
  # only this gateway's own database: removing bench.db here while another gateway (make ab's A side)
  # has it open left that side writing no usage at all (StoreUnavailable), so it did less work than B
  if [ "$off" = 0 ]; then rm -f .sluice/bench.db*; else rm -f ".sluice/bench-$off.db"*; fi
  # shellcheck disable=SC2086  # $4 is a list of NAME=value words
  env ${4:-} taskset -c 0 sluice serve --config "$config" 2> ".sluice/$2" &
  last_gw=$!
  gateways+=("$last_gw")
  # READY_WAIT_S (default 10): longer on a machine busy with other sessions' work
  for _ in $(seq $((${READY_WAIT_S:-10} * 10))); do curl -fs "127.0.0.1:$((8081 + off))/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "sluice did not become ready; see .sluice/$2" >&2; exit 1
}

# The request of one client API and kind: sets $lua, $path and $model. $1: chat | messages | responses,
# $2: plain | stream. The same work on every API (the yardstick's chat.lua and chat-stream.lua).
api_request() {
  lua=chat.lua path=/v1/chat/completions model=mock-model
  case $1 in
    chat) ;;
    messages) lua=$root/bench/messages.lua path=/v1/messages ;;
    responses) lua=$root/bench/responses.lua path=/v1/responses ;;
    *) echo "unknown API $1 (chat, messages, responses)" >&2; exit 1 ;;
  esac
  [ "$2" = stream ] && { lua=${lua%.lua}-stream.lua; model=mock-stream; }
  return 0
}

start_stack() {  # $1: name of the gateway's log file under .sluice/
  start_upstream
  if grep -qs 'OTLP_ENDPOINT' "${CONFIG:-bench/gateway.yaml}"; then start_collector; fi
  start_gateway "${CONFIG:-bench/gateway.yaml}" "$1"
  gw=$last_gw
}

# A live OTLP/HTTP collector (bench/otlp_sink.py: answers 200, decodes nothing) on CPU 1, beside wrk,
# at 127.0.0.1:${OTLP_PORT:-14318}; bench/gateway-tracing.yaml exports there. Sets $collector.
start_collector() {
  local port=${OTLP_PORT:-14318}
  taskset -c 1 python "$root/bench/otlp_sink.py" "$port" &
  collector=$!
  for _ in $(seq 100); do curl -fs "127.0.0.1:$port/stats" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the OTLP sink did not start on $port" >&2; exit 1
}

stop_stack() {
  local p
  for p in "${gateways[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # the collector after the gateways: they export what they hold when they stop
  if [ -n "${collector:-}" ]; then kill "$collector" 2>/dev/null || true; wait "$collector" 2>/dev/null || true; fi
  kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
}

rss_mib() { ps -o rss= -p "$gw" | awk '{printf "%.1f", $1/1024}'; }
