# Shared by bench/run.sh and bench/soak.sh: start the canned upstream and one sluice pinned
# to CPU 0, wait until it is ready, and stop both on exit. Sets $gw (pid) and $dir.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
cd "$root"

need() { command -v "$1" >/dev/null || { echo "installing $1"; (apt-get update -qq && apt-get install -y -qq "$1") >/dev/null; }; }
need nginx
need wrk
need curl
command -v sluice >/dev/null || { echo "sluice is not on PATH: run via make" >&2; exit 1; }

start_stack() {  # $1: name of the gateway's log file under .sluice/
  export BENCH_KEY=${BENCH_KEY:-$(sluice keys generate --env prod)}
  export SLUICE_ADMIN_KEY=${SLUICE_ADMIN_KEY:-$(sluice keys generate --admin)}
  mkdir -p .sluice && rm -f .sluice/bench.db*
  dir=$("$shared/start-mock-upstream" | tail -n 1)
  taskset -c 0 sluice serve --config "${CONFIG:-bench/gateway.yaml}" 2> ".sluice/$1" &
  gw=$!
  trap stop_stack EXIT
  for _ in $(seq 100); do curl -fs 127.0.0.1:8081/readyz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "sluice did not become ready; see .sluice/$1" >&2; exit 1
}

stop_stack() {
  kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true
  kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
}

rss_mib() { ps -o rss= -p "$gw" | awk '{printf "%.1f", $1/1024}'; }
