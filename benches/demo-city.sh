# Sourced by the benchmark scripts: waits until the --demo server whose metrics are on
# port $1 has registered the whole demo city (2,350 car parks), for at most 60 s.
wait_for_demo_city() {
  local mport=$1 n
  for _ in $(seq 1 120); do
    n=$( (curl -s "http://127.0.0.1:$mport/metrics" || true) | awk '/^citypark_grpc_requests_total\{method="citypark.v1.Registry\/UpsertCarPark",code="ok"\}/ {print $2}')
    [ "${n:-0}" -ge 2350 ] 2>/dev/null && return 0
    sleep 0.5
  done
  echo "the demo city was not registered within 60 s" >&2
}
