#!/usr/bin/env bash
# workers.sh: UDP request/response through natkeep with NATKEEP_WORKERS=1 and
# =2, the relay pinned to core 1 and the echo server and load to core 0, as
# run.sh pins them. Prints one line per run: rate and relay CPU per round
# trip (utime+stime from /proc/PID/stat). Knobs: REPEATS (3), SECONDS_PER_RUN
# (8), BENCH_PORT_BASE (17600). Only processes it started are stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${REPEATS:-3} secs=${SECONDS_PER_RUN:-8} base=${BENCH_PORT_BASE:-17600}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
go build -o "$dir/natkeep" ./cmd/natkeep
go build -o "$dir/natkeep-bench" ./cmd/natkeep-bench
clk=$(getconf CLK_TCK)
taskset -c 0 "$dir/natkeep-bench" echo -udp "127.0.0.1:$((base + 1))" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
for rep in $(seq "$repeats"); do
	for w in 1 2; do
		for flows in 64 1; do
			NATKEEP_ROUTES="udp://127.0.0.1:$base/127.0.0.1:$((base + 1))" NATKEEP_ADMIN_ADDR=off NATKEEP_WORKERS=$w \
				NATKEEP_LOG_LEVEL=warn taskset -c 1 "$dir/natkeep" >/dev/null 2>&1 &
			nk=$!
			pids+=("$nk")
			sleep 0.5
			read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$nk/stat")
			out=$(taskset -c 0 "$dir/natkeep-bench" udp-rr -target "127.0.0.1:$base" -flows "$flows" -duration "${secs}s" 2>/dev/null)
			read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$nk/stat")
			kill "$nk"
			wait "$nk" 2>/dev/null || true
			rate=$(sed -n 's/.*"rate": *\([0-9.]*\).*/\1/p' <<<"$out")
			ticks=$(((u1 + s1) - (u0 + s0)))
			awk -v r="$rep" -v w="$w" -v f="$flows" -v rate="$rate" -v t="$ticks" -v clk="$clk" -v s="$secs" \
				'BEGIN { printf "repeat %d workers %d flows %d: %.0f rr/s, %.2f us relay CPU per round trip\n", r, w, f, rate, (rate > 0 ? t / clk * 1e6 / (rate * s) : 0) }'
		done
	done
done
