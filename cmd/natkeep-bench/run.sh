#!/usr/bin/env bash
# run.sh - compare natkeep with a direct path, socat, nginx (stream) and
# HAProxy on loopback, and print one Markdown table. See README.md here.
#
#   cmd/natkeep-bench/run.sh                 # full run, ~10 minutes on 2 cores
#   BENCH_QUICK=1 cmd/natkeep-bench/run.sh   # ~3-minute smoke run
#
# Environment:
#   BENCH_QUICK=1         short durations, 1 repeat, 10k idle only
#   BENCH_PORT_BASE=N     first of the loopback ports used (default 17000; N+1..N+60)
#   BENCH_SRC=DIR         module to build natkeep and natkeep-bench from (default: this repo)
#   BENCH_KEEP=DIR        copy results.tsv, raw JSON and relay logs there
#   BENCH_PEERS="..."     subset of "socat nginx haproxy" to compare (default all found)
#   BENCH_REPEATS, BENCH_RR_SECONDS, BENCH_IPERF_SECONDS, BENCH_RATE_SECONDS,
#   BENCH_IDLE_COUNTS ("10000 100000"), BENCH_HB_WARM, BENCH_HB_WINDOW  override the defaults
#
# It installs nothing. It starts only processes it records (each relay in a
# process group of its own, via setsid) and stops only those, on exit too.
# Every wait is bounded. All traffic stays on 127.0.0.0/8.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${BENCH_SRC:-$(cd "$HERE/../.." && pwd)}
QUICK=${BENCH_QUICK:-0}
B=${BENCH_PORT_BASE:-17000}

if [[ $QUICK == 1 ]]; then
	REPEATS=${BENCH_REPEATS:-1}; RR_S=${BENCH_RR_SECONDS:-2}; IPERF_S=${BENCH_IPERF_SECONDS:-3}
	RATE_S=${BENCH_RATE_SECONDS:-2}; IDLE_COUNTS=${BENCH_IDLE_COUNTS:-10000}
	HB_WARM=${BENCH_HB_WARM:-2}; HB_WINDOW=${BENCH_HB_WINDOW:-22}; HB_RATE_WINDOW=10
	SOCAT_IDLE_MAX=2000 # socat forks a process per flow: 10k take ~50 s each way
else
	REPEATS=${BENCH_REPEATS:-3}; RR_S=${BENCH_RR_SECONDS:-10}; IPERF_S=${BENCH_IPERF_SECONDS:-10}
	RATE_S=${BENCH_RATE_SECONDS:-5}; IDLE_COUNTS=${BENCH_IDLE_COUNTS:-"10000 100000"}
	HB_WARM=${BENCH_HB_WARM:-20}; HB_WINDOW=${BENCH_HB_WINDOW:-60}; HB_RATE_WINDOW=30
	SOCAT_IDLE_MAX=10000
fi
RATE_CONC=16
HB_INTERVAL=20 # natkeep's default heartbeat interval, s; jittered to 80-100%, so 18 s on average

# Ports (all on 127.0.0.1).
# Each TCP relay dials its own echo port: the TIME_WAIT sockets one relay's
# connection-rate run leaves behind (on its upstream side) must not crowd
# the ephemeral ports of the next relay's run.
ECHO_U=$((B + 1)) ECHO_T=$((B + 2)) IPERF=$((B + 3))
ECHO_T_NK=$((B + 4)) ECHO_T_SO=$((B + 5)) ECHO_T_NG=$((B + 6)) ECHO_T_HA=$((B + 7))
ECHO_TX="$((B + 51)) $((B + 52)) $((B + 53)) $((B + 54))" # more echo ports for natkeep (100k idle connections)
NK_U=$((B + 11)) NK_T=$((B + 12)) NK_I=$((B + 13))   # natkeep; B+14..B+17 extra TCP routes
SO_U=$((B + 21)) SO_T=$((B + 22)) SO_I=$((B + 23))   # socat
NG_U=$((B + 31)) NG_T=$((B + 32)) NG_I=$((B + 33))   # nginx
HA_T=$((B + 42)) HA_I=$((B + 43))                    # haproxy (TCP only)

TMP=$(mktemp -d /tmp/natkeep-bench.XXXXXX)
RES=$TMP/results.tsv
RAW=$TMP/raw.jsonl
: >"$RES"
: >"$RAW"
PIDS=() # process group leaders started by this script

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---- process management: only PIDs we started ------------------------------

# start NAME CORE CMD... runs CMD pinned to CORE in a new process group
# (setsid execs, so $! is the process itself and its group ID); logs to
# $TMP/NAME.log. Sets STARTED to the PID.
start() {
	local name=$1 core=$2
	shift 2
	if [[ -n $TASKSET ]]; then
		setsid taskset -c "$core" "$@" >"$TMP/$name.log" 2>&1 &
	else
		setsid "$@" >"$TMP/$name.log" 2>&1 &
	fi
	STARTED=$!
	PIDS+=("$STARTED")
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop PID ends the process group we started as PID (TERM, then KILL after 5 s).
stop() {
	local pid=$1 i sig=TERM
	local target=$pid
	[[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]] && target=-$pid
	for i in $(seq 1 50); do
		if ! alive "$pid" && ! pgid_members "$pid" | grep -q .; then break; fi
		[[ $i == 1 ]] && kill -TERM -- "$target" 2>/dev/null || true
		[[ $i == 40 ]] && kill -KILL -- "$target" 2>/dev/null || true
		sleep 0.1
	done
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]+"${PIDS[@]}"}"; do if [[ $p != "$pid" ]]; then keep+=("$p"); fi; done
	PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
	local p
	for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop "$p"; done
	if [[ -n ${BENCH_KEEP:-} ]]; then
		mkdir -p "$BENCH_KEEP" && cp -r "$TMP"/. "$BENCH_KEEP"/ && log "results kept in $BENCH_KEEP"
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- /proc readers -----------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# pgid_members PGID lists the PIDs in a process group (a relay and its forks).
pgid_members() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }

# cpu_ticks PID: utime+stime of every process in PID's group, plus the
# leader's cutime+cstime (children that already exited, e.g. socat's forks).
cpu_ticks() {
	local pid=$1 p total=0 rest
	for p in $(pgid_members "$pid"); do
		rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		rest=${rest##*) } # after the command name, which may hold spaces
		# shellcheck disable=SC2086
		set -- $rest
		# fields 14..17 of stat are utime stime cutime cstime: 12..15 here
		total=$((total + ${12} + ${13}))
		[[ $p == "$pid" ]] && total=$((total + ${14} + ${15}))
	done
	echo "$total"
}

# mem_kb PID MODE: rss = VmRSS of the process; pss = Pss summed over its
# process group (socat forks a process per flow: summing their RSS would
# count shared library pages thousands of times).
mem_kb() {
	local pid=$1 mode=$2
	if [[ $mode == rss ]]; then
		awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0
	else
		pgid_members "$pid" | sed 's|.*|/proc/&/smaps_rollup|' | xargs -r cat 2>/dev/null |
			awk '/^Pss:/ { s += $2 } END { print s + 0 }' || true
	fi
}

# fd_count PID MODE: open descriptors of the process (rss) or its group (pss).
fd_count() {
	local pid=$1 mode=$2 p n=0
	if [[ $mode == rss ]]; then
		{ ls "/proc/$pid/fd" 2>/dev/null || true; } | wc -l
	else
		for p in $(pgid_members "$pid"); do n=$((n + $({ ls "/proc/$p/fd" 2>/dev/null || true; } | wc -l))); done
		echo "$n"
	fi
}

now_s() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1" | tr -d '"'; }

# ---- results -----------------------------------------------------------------

metric() { printf 'm\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$RES"; }
val() { printf 'v\t%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
note() { printf 'n\t%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }

# ---- tools and peers ---------------------------------------------------------

need() { command -v "$1" >/dev/null 2>&1; }
for t in go awk sed ps setsid getconf; do
	need "$t" || { echo "run.sh: $t is required" >&2; exit 1; }
done
TASKSET=taskset
if ! need taskset; then
	log "taskset not found: nothing is pinned (figures are noisier)"
	TASKSET=
fi
NCPU=$(nproc)
CORE_LOAD=0 CORE_RELAY=1
if ((NCPU < 2)); then
	log "only $NCPU CPU: load and relays share core 0"
	CORE_RELAY=0
fi
HAVE_SS=0
need ss && HAVE_SS=1

PEERS=()
want_peer() { [[ -z ${BENCH_PEERS:-} || " $BENCH_PEERS " == *" $1 "* ]]; }
if want_peer socat; then
	if need socat; then PEERS+=(socat); else log "socat not found: skipped (apt-get install -y socat)"; fi
fi
NGINX_MOD=""
if want_peer nginx; then
	if need nginx; then
		# A dynamic stream module (Debian: libnginx-mod-stream) is loaded
		# explicitly, since the generated config includes nothing.
		for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
			if [[ -f $m ]]; then NGINX_MOD=$m && break; fi
		done
		if [[ -n $NGINX_MOD ]] || nginx -V 2>&1 | tr ' ' '\n' | grep -qx -- --with-stream; then
			PEERS+=(nginx)
		else
			log "nginx has no stream module: skipped (Debian: apt-get install -y libnginx-mod-stream)"
		fi
	else
		log "nginx not found: skipped (apt-get install -y nginx libnginx-mod-stream)"
	fi
fi
if want_peer haproxy; then
	if need haproxy; then PEERS+=(haproxy); else log "haproxy not found: skipped (apt-get install -y haproxy)"; fi
fi
HAVE_IPERF=0
if need iperf3; then HAVE_IPERF=1; else log "iperf3 not found: TCP bulk throughput skipped (apt-get install -y iperf3)"; fi
has_peer() { [[ " ${PEERS[*]-} " == *" $1 "* ]]; }

# File descriptors: as high as allowed (root with CAP_SYS_RESOURCE may go
# past the hard limit), inherited by every relay started below.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
PORT_RANGE=$(awk '{ print $2 - $1 + 1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 28232)
log "nofile $NOFILE, ephemeral ports $PORT_RANGE, CLK_TCK $CLK_TCK, peers: ${PEERS[*]-none}, quick=$QUICK"

# ---- build -------------------------------------------------------------------

log "building natkeep and natkeep-bench from $SRC"
(cd "$SRC" && go build -o "$TMP/natkeep" ./cmd/natkeep && go build -o "$TMP/natkeep-bench" ./cmd/natkeep-bench)
NB=$TMP/natkeep-bench

# ---- ports and readiness -----------------------------------------------------

port_busy() { # PROTO PORT
	((HAVE_SS)) || return 1
	[[ -n $(ss -Hn "-l${1:0:1}" "sport = :$2" 2>/dev/null) ]]
}
for p in $ECHO_U $NK_U $SO_U $NG_U; do port_busy udp "$p" && { echo "run.sh: UDP port $p busy; set BENCH_PORT_BASE" >&2; exit 1; }; done
for p in $ECHO_T $ECHO_T_NK $ECHO_T_SO $ECHO_T_NG $ECHO_T_HA $IPERF $ECHO_TX $NK_T $NK_I $((B + 14)) $((B + 15)) $((B + 16)) $((B + 17)) $SO_T $SO_I $NG_T $NG_I $HA_T $HA_I; do
	port_busy tcp "$p" && { echo "run.sh: TCP port $p busy; set BENCH_PORT_BASE" >&2; exit 1; }
done

# wait_listen PID PROTO PORT...: until every port listens (10 s at most).
wait_listen() {
	local pid=$1 proto=$2 i p ok
	shift 2
	for i in $(seq 1 100); do
		alive "$pid" || { log "process $pid exited; its log:"; tail -n 5 "$TMP"/*.log >&2; return 1; }
		ok=1
		if ((HAVE_SS)); then
			for p in "$@"; do port_busy "$proto" "$p" || ok=0; done
		elif ((i < 10)); then
			ok=0
		fi
		((ok)) && return 0
		sleep 0.1
	done
	log "ports $* ($proto) never listened"
	return 1
}

# ---- servers -----------------------------------------------------------------

ECHO_TCP_LIST="127.0.0.1:$ECHO_T"
for p in $ECHO_T_NK $ECHO_T_SO $ECHO_T_NG $ECHO_T_HA $ECHO_TX; do ECHO_TCP_LIST+=",127.0.0.1:$p"; done
start echo $CORE_LOAD "$NB" echo -udp "127.0.0.1:$ECHO_U" -tcp "$ECHO_TCP_LIST" -stats-file "$TMP/echo-stats.json" -max-run 1h
ECHO_PID=$STARTED
wait_listen $ECHO_PID udp $ECHO_U
wait_listen $ECHO_PID tcp $ECHO_T
if ((HAVE_IPERF)); then
	start iperf3 $CORE_LOAD iperf3 -s -B 127.0.0.1 -p $IPERF
	IPERF_PID=$STARTED
	wait_listen $IPERF_PID tcp $IPERF || HAVE_IPERF=0
fi

# ---- relays ------------------------------------------------------------------

# Each start_* sets RELAY_PID (and for socat the PIDs of its three processes).
NK_ROUTES="udp://127.0.0.1:$NK_U/127.0.0.1:$ECHO_U,tcp://127.0.0.1:$NK_T/127.0.0.1:$ECHO_T_NK,tcp://127.0.0.1:$NK_I/127.0.0.1:$IPERF"
start_natkeep() { # [ROUTES [HEARTBEAT_INTERVAL]]
	start natkeep $CORE_RELAY env NATKEEP_ROUTES="${1:-$NK_ROUTES}" NATKEEP_ADMIN_ADDR=off \
		NATKEEP_UDP_HEARTBEAT_INTERVAL="${2:-${HB_INTERVAL}s}" \
		NATKEEP_UDP_MAX_FLOWS=auto NATKEEP_DRAIN_TIMEOUT=2s NATKEEP_LOG_FORMAT=json "$TMP/natkeep"
	RELAY_PID=$STARTED
	wait_listen $RELAY_PID tcp $NK_T && wait_listen $RELAY_PID udp $NK_U
}

start_socat() {
	start socat-udp $CORE_RELAY socat -T 600 "UDP4-LISTEN:$SO_U,bind=127.0.0.1,fork,reuseaddr" "UDP4:127.0.0.1:$ECHO_U"
	SOCAT_U=$STARTED
	start socat-tcp $CORE_RELAY socat "TCP4-LISTEN:$SO_T,bind=127.0.0.1,fork,reuseaddr,backlog=4096" "TCP4:127.0.0.1:$ECHO_T_SO"
	SOCAT_T=$STARTED
	start socat-iperf $CORE_RELAY socat "TCP4-LISTEN:$SO_I,bind=127.0.0.1,fork,reuseaddr" "TCP4:127.0.0.1:$IPERF"
	SOCAT_I=$STARTED
	wait_listen $SOCAT_U udp $SO_U && wait_listen $SOCAT_T tcp $SO_T && wait_listen $SOCAT_I tcp $SO_I
}
stop_socat() { stop "$SOCAT_U"; stop "$SOCAT_T"; stop "$SOCAT_I"; }

start_nginx() {
	mkdir -p "$TMP/nginx"
	# Connection slots, not descriptors: a UDP session takes two slots and
	# one descriptor. nginx preallocates them (outside the measured delta).
	local conns=50000
	{
		[[ -n $NGINX_MOD ]] && echo "load_module $NGINX_MOD;"
		cat <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $conns; }
stream {
    proxy_timeout 10m;
    server { listen 127.0.0.1:$NG_U udp; proxy_pass 127.0.0.1:$ECHO_U; }
    server { listen 127.0.0.1:$NG_T backlog=4096; proxy_pass 127.0.0.1:$ECHO_T_NG; }
    server { listen 127.0.0.1:$NG_I; proxy_pass 127.0.0.1:$IPERF; }
}
EOF
	} >"$TMP/nginx/nginx.conf"
	start nginx $CORE_RELAY nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
	RELAY_PID=$STARTED
	wait_listen $RELAY_PID tcp $NG_T && wait_listen $RELAY_PID udp $NG_U
}

start_haproxy() {
	local maxconn=$(((NOFILE - 200) / 2))
	cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $maxconn
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 10m
    timeout server 10m
    maxconn $maxconn
frontend fe_echo
    bind 127.0.0.1:$HA_T
    default_backend be_echo
backend be_echo
    server echo 127.0.0.1:$ECHO_T_HA
frontend fe_iperf
    bind 127.0.0.1:$HA_I
    default_backend be_iperf
backend be_iperf
    server iperf 127.0.0.1:$IPERF
EOF
	start haproxy $CORE_RELAY haproxy -db -f "$TMP/haproxy.cfg"
	RELAY_PID=$STARTED
	wait_listen $RELAY_PID tcp $HA_T
}

# Targets: udp port, tcp port, iperf port, pid of the UDP relay process, of the TCP one.
declare -A T_UDP T_TCP T_IPERF P_UDP P_TCP
T_UDP[direct]=$ECHO_U T_TCP[direct]=$ECHO_T T_IPERF[direct]=$IPERF
T_UDP[natkeep]=$NK_U T_TCP[natkeep]=$NK_T T_IPERF[natkeep]=$NK_I
T_UDP[socat]=$SO_U T_TCP[socat]=$SO_T T_IPERF[socat]=$SO_I
T_UDP[nginx]=$NG_U T_TCP[nginx]=$NG_T T_IPERF[nginx]=$NG_I
T_TCP[haproxy]=$HA_T T_IPERF[haproxy]=$HA_I

# load CMD... runs the load generator pinned to the load core, bounded.
load() {
	local limit=$1
	shift
	if [[ -n $TASKSET ]]; then
		timeout -k 5 "$limit" taskset -c $CORE_LOAD "$NB" "$@"
	else
		timeout -k 5 "$limit" "$NB" "$@"
	fi
}

# ---- metric rows (table order) ----------------------------------------------

metric udp_rr_1 "UDP request/response rate, 1 flow (rr/s)" higher 0
metric udp_rr_64 "UDP request/response rate, 64 flows (rr/s)" higher 0
metric udp_p50_1 "UDP latency p50, 1 flow (µs)" lower 1
metric udp_p99_1 "UDP latency p99, 1 flow (µs)" lower 1
metric udp_add50_1 "added latency p50 over direct, 1 flow (µs)" lower 1 minus-direct:udp_p50_1
metric udp_add99_1 "added latency p99 over direct, 1 flow (µs)" lower 1 minus-direct:udp_p99_1
metric udp_p99_64 "UDP latency p99, 64 flows (µs)" lower 1
metric udp_cpu_1 "relay CPU per 100k datagrams, 1 flow (ms)" lower 1
metric udp_cpu_64 "relay CPU per 100k datagrams, 64 flows (ms)" lower 1
metric udp_busy_64 "relay core busy during 64-flow rr (%)" none 0
metric udp_rr_1x32 "UDP request/response rate, 1 flow x window 32 (rr/s)" higher 0
metric udp_rr_64x2 "UDP request/response rate, 64 flows x window 2 (rr/s)" higher 0
metric udp_cpurt_1x32 "relay CPU per UDP round trip, 1 flow x window 32 (µs)" lower 2
metric udp_cpurt_64x2 "relay CPU per UDP round trip, 64 flows x window 2 (µs)" lower 2
metric tcp_bulk "TCP bulk throughput, iperf3 ${IPERF_S}s (Gbit/s)" higher 2
metric tcp_bulk_busy "relay core busy during bulk (%)" none 0
metric tcp_rate "TCP connections/s (connect, 64 B rr, close; $RATE_CONC workers)" higher 0
metric tcp_cpu_conn "relay CPU per 1,000 TCP connections (ms)" lower 1
for n in $IDLE_COUNTS; do
	k=$((n / 1000))k
	metric "udp_mem_$k" "user-space memory per idle UDP flow, $k flows (KiB)" lower 2
	metric "udp_fds_$k" "file descriptors per idle UDP flow, $k flows" lower 2
	metric "tcp_mem_$k" "user-space memory per idle TCP connection, $k conns (KiB)" lower 2
	metric "tcp_fds_$k" "file descriptors per idle TCP connection, $k conns" lower 2
done
metric hb_cpu "natkeep heartbeat CPU, idle flows at ${HB_INTERVAL}s interval (% of a core, measured)" lower 3
metric hb_cpu_100k "natkeep heartbeat CPU, 100k idle flows (% of a core, scaled from cost per heartbeat)" lower 3
metric hb_rate "natkeep heartbeat CPU at 100k flows' heartbeat rate (% of a core, measured)" lower 3

# ---- UDP request/response ---------------------------------------------------

# rr TARGET FLOWS[xWINDOW]: one udp-rr run (WINDOW requests in flight per
# flow, 1 if not given); records rate, latency, relay CPU.
rr() {
	local tgt=$1 flows=${2%x*} window=1 pid=${P_UDP[$1]:-} t0=0 t1 w0 w1 out
	[[ $2 == *x* ]] && window=${2#*x}
	[[ -n $pid ]] && t0=$(cpu_ticks "$pid")
	w0=$(now_s)
	out=$(load $((RR_S + 30)) udp-rr -target "127.0.0.1:${T_UDP[$tgt]}" -flows "$flows" -window "$window" -duration "${RR_S}s") || {
		log "udp-rr $tgt $2 failed"
		note "udp_rr_$2" "$tgt" "failed"
		return 0
	}
	if ((window > 1)); then
		rr_windowed "$tgt" "$2" "$out" "$pid" "$t0"
		return 0
	fi
	w1=$(now_s)
	echo "{\"target_name\":\"$tgt\",\"result\":$out}" >>"$RAW"
	local rate total to
	rate=$(jget "$out" rate) total=$(jget "$out" total_requests) to=$(jget "$out" timeouts)
	val "udp_rr_$flows" "$tgt" "$rate"
	val "udp_p50_$flows" "$tgt" "$(jget "$out" p50_us)"
	val "udp_p99_$flows" "$tgt" "$(jget "$out" p99_us)"
	if awk -v a="$to" -v b="$total" 'BEGIN { exit !(a * 1000 > b) }'; then
		note "udp_rr_$flows" "$tgt" "timeouts $to"
	fi
	if [[ -n $pid ]]; then
		t1=$(cpu_ticks "$pid")
		local cpu_s
		cpu_s=$(calc "($t1 - $t0) / $CLK_TCK")
		if ((total > 0)); then val "udp_cpu_$flows" "$tgt" "$(calc "$cpu_s * 1000 / (2 * $total) * 100000")"; fi
		if [[ $flows == 64 ]]; then val udp_busy_64 "$tgt" "$(calc "$cpu_s / ($w1 - $w0) * 100")"; fi
	fi
	log "udp-rr $tgt flows=$flows: $(jget "$out" rate) rr/s p50 $(jget "$out" p50_us) p99 $(jget "$out" p99_us) µs"
}

# rr_windowed TARGET MODE OUT PID T0: the rows of a windowed udp-rr run:
# rate, and relay CPU per round trip in µs (as the issue tables give it).
rr_windowed() {
	local tgt=$1 mode=$2 out=$3 pid=$4 t0=$5 total to
	echo "{\"target_name\":\"$tgt\",\"window_mode\":\"$mode\",\"result\":$out}" >>"$RAW"
	total=$(jget "$out" total_requests) to=$(jget "$out" timeouts)
	val "udp_rr_$mode" "$tgt" "$(jget "$out" rate)"
	if awk -v a="$to" -v b="$total" 'BEGIN { exit !(a * 1000 > b) }'; then
		note "udp_rr_$mode" "$tgt" "timeouts $to"
	fi
	if [[ -n $pid ]] && ((total > 0)); then
		val "udp_cpurt_$mode" "$tgt" "$(calc "($(cpu_ticks "$pid") - $t0) / $CLK_TCK * 1000000 / $total")"
	fi
	log "udp-rr $tgt $mode: $(jget "$out" rate) rr/s"
}

RR_TARGETS=(direct natkeep)
if has_peer socat; then RR_TARGETS+=(socat); fi
if has_peer nginx; then RR_TARGETS+=(nginx); fi
if has_peer haproxy; then for k in 1 64 1x32 64x2; do note "udp_rr_$k" haproxy "no UDP"; done; fi
if has_peer socat; then for k in 1x32 64x2; do note "udp_rr_$k" socat "not run: a process per flow"; done; fi

log "starting relays for the throughput phase"
start_natkeep
P_UDP[natkeep]=$RELAY_PID P_TCP[natkeep]=$RELAY_PID
if has_peer socat; then start_socat; P_UDP[socat]=$SOCAT_U P_TCP[socat]=$SOCAT_T; fi
if has_peer nginx; then start_nginx; P_UDP[nginx]=$RELAY_PID P_TCP[nginx]=$RELAY_PID; fi
if has_peer haproxy; then start_haproxy; P_TCP[haproxy]=$RELAY_PID; fi
sleep 0.5

# Interleaved: each repeat runs every target once, so drift hits all alike.
for rep in $(seq 1 "$REPEATS"); do
	for flows in 1 64; do
		for tgt in "${RR_TARGETS[@]}"; do rr "$tgt" "$flows"; done
	done
	# Windows keep the relay busy; socat, a process per flow, is left out.
	for mode in 1x32 64x2; do
		for tgt in "${RR_TARGETS[@]}"; do [[ $tgt == socat ]] || rr "$tgt" "$mode"; done
	done
done

# ---- TCP bulk and connection rate -------------------------------------------

TCP_TARGETS=(direct natkeep)
for p in socat nginx haproxy; do if has_peer $p; then TCP_TARGETS+=("$p"); fi; done

if ((HAVE_IPERF)); then
	for tgt in "${TCP_TARGETS[@]}"; do
		pid=${P_TCP[$tgt]:-}
		if [[ $tgt == socat ]]; then pid=$SOCAT_I; fi
		if [[ -n $pid ]]; then t0=$(cpu_ticks "$pid"); fi
		w0=$(now_s)
		out=$(timeout -k 5 $((IPERF_S + 30)) ${TASKSET:+taskset -c $CORE_LOAD} iperf3 -c 127.0.0.1 -p "${T_IPERF[$tgt]}" -t "$IPERF_S" -f m 2>&1) || {
			log "iperf3 via $tgt failed: $(tail -1 <<<"$out")"
			note tcp_bulk "$tgt" "failed"
			continue
		}
		mbps=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i - 1) } END { print v }' <<<"$out")
		if [[ -n $pid ]]; then
			t1=$(cpu_ticks "$pid") w1=$(now_s)
			val tcp_bulk_busy "$tgt" "$(calc "($t1 - $t0) / $CLK_TCK / ($w1 - $w0) * 100")"
		fi
		if [[ -n $mbps ]]; then
			val tcp_bulk "$tgt" "$(calc "$mbps / 1000")"
			log "iperf3 $tgt: $mbps Mbit/s"
		else
			note tcp_bulk "$tgt" "no result"
		fi
		sleep 0.5
	done
else
	note tcp_bulk natkeep "iperf3 not installed"
fi

for tgt in "${TCP_TARGETS[@]}"; do
	pid=${P_TCP[$tgt]:-}
	[[ -n $pid ]] && t0=$(cpu_ticks "$pid")
	out=$(load $((RATE_S + 30)) tcp-rate -target "127.0.0.1:${T_TCP[$tgt]}" -duration "${RATE_S}s" -conc $RATE_CONC) || {
		note tcp_rate "$tgt" "failed"
		continue
	}
	echo "{\"target_name\":\"$tgt\",\"result\":$out}" >>"$RAW"
	val tcp_rate "$tgt" "$(jget "$out" rate)"
	errs=$(jget "$out" errors)
	if ((errs > 0)); then note tcp_rate "$tgt" "$errs errors"; fi
	if [[ -n $pid ]]; then
		sleep 0.5 # let the relay finish closing
		t1=$(cpu_ticks "$pid")
		all=$(jget "$out" conns_total)
		if ((all > 0)); then val tcp_cpu_conn "$tgt" "$(calc "($t1 - $t0) / $CLK_TCK * 1000 / $all * 1000")"; fi
	fi
	log "tcp-rate $tgt: $(jget "$out" rate) conns/s ($errs errors)"
	sleep 1 # TIME_WAIT churn settles
done

log "stopping the throughput-phase relays"
stop "${P_UDP[natkeep]}"
if has_peer socat; then stop_socat; fi
if has_peer nginx; then stop "${P_UDP[nginx]}"; fi
if has_peer haproxy; then stop "${P_TCP[haproxy]}"; fi

# ---- idle flows and connections: memory, descriptors, heartbeats -------------

# idle_start TGT KIND [ROUTES]: a fresh relay for an idle test; sets
# RELAY_PID, IDLE_TARGET (where the holder connects) and MEM_MODE.
idle_start() {
	local tgt=$1 kind=$2
	MEM_MODE=rss
	case $tgt/$kind in
	natkeep/*)
		start_natkeep "${3:-}" "${5:-}"
		IDLE_TARGET=127.0.0.1:$NK_U
		[[ $kind == tcp ]] && IDLE_TARGET=${4:-127.0.0.1:$NK_T}
		;;
	socat/udp)
		start socat-udp $CORE_RELAY socat -T 600 "UDP4-LISTEN:$SO_U,bind=127.0.0.1,fork,reuseaddr" "UDP4:127.0.0.1:$ECHO_U"
		RELAY_PID=$STARTED IDLE_TARGET=127.0.0.1:$SO_U MEM_MODE=pss
		wait_listen $RELAY_PID udp $SO_U
		;;
	socat/tcp)
		start socat-tcp $CORE_RELAY socat "TCP4-LISTEN:$SO_T,bind=127.0.0.1,fork,reuseaddr,backlog=4096" "TCP4:127.0.0.1:$ECHO_T_SO"
		RELAY_PID=$STARTED IDLE_TARGET=127.0.0.1:$SO_T MEM_MODE=pss
		wait_listen $RELAY_PID tcp $SO_T
		;;
	nginx/*)
		start_nginx
		IDLE_TARGET=127.0.0.1:$NG_U
		[[ $kind == tcp ]] && IDLE_TARGET=127.0.0.1:$NG_T
		;;
	haproxy/tcp)
		start_haproxy
		IDLE_TARGET=127.0.0.1:$HA_T
		;;
	esac
	sleep 1
}

# open_idle KIND COUNT: starts a holder with COUNT idle flows (udp) or
# connections (tcp) through IDLE_TARGET and waits until they are open;
# sets HOLDER and HOLD_JSON (empty on failure).
open_idle() {
	local kind=$1 count=$2 ready=$TMP/ready.json i args
	rm -f "$ready"
	HOLD_JSON=""
	if [[ $kind == udp ]]; then
		args=(udp-idle -target "$IDLE_TARGET" -flows "$count")
	else
		args=(tcp-idle -target "$IDLE_TARGET" -conns "$count")
	fi
	start "holder-$kind" $CORE_LOAD "$NB" "${args[@]}" -hold "$((HB_WARM + HB_WINDOW + 200))s" -ready "$ready"
	HOLDER=$STARTED
	for i in $(seq 1 1800); do # 180 s at most
		[[ -f $ready ]] && break
		alive "$HOLDER" || break
		sleep 0.1
	done
	if [[ -f $ready ]]; then
		HOLD_JSON=$(cat "$ready")
		sleep 2 # let the relay settle (lazy allocations, socat forks)
	fi
}

# probe_fds TGT KIND: descriptors one idle flow/connection costs the relay,
# measured on 200 of them with a throwaway relay.
probe_fds() {
	local tgt=$1 kind=$2 f0 f1 ans per=1
	idle_start "$tgt" "$kind"
	f0=$(fd_count "$RELAY_PID" "$MEM_MODE")
	open_idle "$kind" 200
	ans=$(jget "$HOLD_JSON" answered)
	if [[ -n $ans ]] && ((ans > 0)); then
		f1=$(fd_count "$RELAY_PID" "$MEM_MODE")
		per=$(awk -v a="$f0" -v b="$f1" -v n="$ans" 'BEGIN { p = (b - a) / n; print (p < 1 ? 1 : int(p + 0.5)) }')
	fi
	stop "$HOLDER"
	stop "$RELAY_PID"
	PROBE_FDS=$per
}

# idle TGT KIND COUNT KEY [HB]: memory and descriptors per idle flow with
# COUNT of them (fewer if the relay's descriptor limit cannot hold COUNT:
# the cell then says how many); with HB, natkeep's heartbeat CPU too.
idle() {
	local tgt=$1 kind=$2 count=$3 key=$4 hb=${5:-} n=$3 per=1 routes="" targets=""
	if [[ $MEM_PER_PROCESS_LIMITED == *" $tgt "* ]]; then
		probe_fds "$tgt" "$kind"
		per=$PROBE_FDS
		local fit=$(((NOFILE - 500) / per))
		if ((fit < n)); then
			n=$(((fit / 1000) * 1000))
			((n < 1000)) && n=$fit
			note "${kind}_mem_$key" "$tgt" "n=$n: $per fds each, limit $NOFILE"
			log "$kind idle via $tgt: $per fds per flow, RLIMIT_NOFILE $NOFILE holds $n, not $count"
		fi
	fi
	if [[ $tgt == socat ]] && ((n > SOCAT_IDLE_MAX)); then
		n=$SOCAT_IDLE_MAX
		note "${kind}_mem_$key" socat "n=$n (quick run)"
	fi
	if [[ $tgt == natkeep && $kind == tcp ]] && ((n > 20000)); then
		# One upstream address takes at most one ephemeral port range of
		# connections: spread the connections over several routes.
		routes=$NK_ROUTES targets=127.0.0.1:$NK_T
		local i=0 p
		for p in $ECHO_TX; do
			routes+=",tcp://127.0.0.1:$((B + 14 + i))/127.0.0.1:$p"
			targets+=",127.0.0.1:$((B + 14 + i))"
			i=$((i + 1))
		done
	fi
	idle_start "$tgt" "$kind" "$routes" "$targets" ""
	local m0 f0 m1 f1 ans
	m0=$(mem_kb "$RELAY_PID" "$MEM_MODE") f0=$(fd_count "$RELAY_PID" "$MEM_MODE")
	log "$kind idle: $n via $tgt"
	open_idle "$kind" "$n"
	ans=$(jget "$HOLD_JSON" answered)
	if [[ -z $ans ]]; then
		log "$kind idle via $tgt: the holder never got ready"
		note "${kind}_mem_$key" "$tgt" "failed"
		stop "$HOLDER"
		stop "$RELAY_PID"
		return 0
	fi
	echo "{\"target_name\":\"$tgt\",\"result\":$HOLD_JSON}" >>"$RAW"
	m1=$(mem_kb "$RELAY_PID" "$MEM_MODE") f1=$(fd_count "$RELAY_PID" "$MEM_MODE")
	if ((ans > 0)); then
		val "${kind}_mem_$key" "$tgt" "$(calc "($m1 - $m0) / $ans")"
		val "${kind}_fds_$key" "$tgt" "$(calc "($f1 - $f0) / $ans")"
	fi
	if ((ans < n)); then
		note "${kind}_mem_$key" "$tgt" "$ans of $n answered"
	fi
	if [[ $MEM_MODE == pss ]]; then
		note "${kind}_mem_$key" "$tgt" "PSS of all forks"
	fi
	log "$kind idle via $tgt: $ans/$n answered; memory $m0 -> $m1 KiB, fds $f0 -> $f1"
	if [[ -n $hb ]] && ((ans > 0)); then
		heartbeat_cpu "$ans"
	fi
	stop "$HOLDER"
	stop "$RELAY_PID"
	if [[ -n $hb ]] && ((ans > 0)) && ((count < 100000)); then
		heartbeat_rate "$ans"
	fi
}

# hb_window FLOWS WARM WINDOW: natkeep's CPU while FLOWS idle flows get
# heartbeats (the echo server counts them: natkeep's default heartbeat is an
# empty datagram, which it ignores). Sets HB_CPU_S, HB_BEATS, HB_PCT, HB_SECS.
hb_window() {
	local flows=$1 warm=$2 window=$3 e0 e1 t0 t1 w0 w1
	log "heartbeat CPU: ${warm}s warm-up, then a ${window}s window with $flows idle flows"
	sleep "$warm"
	kill -USR1 "$ECHO_PID"
	sleep 0.3
	e0=$(jget "$(cat "$TMP/echo-stats.json")" udp_empty)
	t0=$(cpu_ticks "$RELAY_PID") w0=$(now_s)
	sleep "$window"
	t1=$(cpu_ticks "$RELAY_PID") w1=$(now_s)
	kill -USR1 "$ECHO_PID"
	sleep 0.3
	e1=$(jget "$(cat "$TMP/echo-stats.json")" udp_empty)
	HB_CPU_S=$(calc "($t1 - $t0) / $CLK_TCK") HB_BEATS=$((e1 - e0)) HB_SECS=$(calc "$w1 - $w0")
	HB_PCT=$(calc "$HB_CPU_S / $HB_SECS * 100")
	log "heartbeats: $HB_BEATS in ${HB_SECS}s, natkeep CPU ${HB_CPU_S}s = $HB_PCT% of a core"
}

# heartbeat_cpu FLOWS: the default interval with the flows held now, then
# (if FLOWS < 100k) FLOWS flows at an interval short enough to beat at the
# rate 100k flows beat at the default interval.
heartbeat_cpu() {
	local flows=$1
	hb_window "$flows" "$HB_WARM" "$HB_WINDOW"
	val hb_cpu natkeep "$HB_PCT"
	note hb_cpu natkeep "$flows flows, $HB_BEATS heartbeats in $(printf %.0f "$HB_SECS")s"
	if ((HB_BEATS > 0)); then
		# Steady state: each flow beats once per 0.9 interval on average.
		val hb_cpu_100k natkeep "$(calc "$HB_CPU_S / $HB_BEATS * 100000 / ($HB_INTERVAL * 0.9) * 100")"
		note hb_cpu_100k natkeep "scaled from $flows flows"
	fi
}

# heartbeat_rate FLOWS: FLOWS fresh flows with the interval scaled down by
# FLOWS/100k, so natkeep sends as many heartbeats per second as with 100k.
heartbeat_rate() {
	local flows=$1 ms
	ms=$(awk -v n="$flows" -v i="$HB_INTERVAL" 'BEGIN { printf "%d", i * 1000 * n / 100000 }')
	idle_start natkeep udp "" "" "${ms}ms"
	open_idle udp "$flows"
	local ans
	ans=$(jget "$HOLD_JSON" answered)
	if [[ -n $ans ]] && ((ans > 0)); then
		hb_window "$ans" "$(awk -v m="$ms" 'BEGIN { printf "%d", 2 * m / 1000 + 1 }')" "$HB_RATE_WINDOW"
		val hb_rate natkeep "$HB_PCT"
		note hb_rate natkeep "$ans flows at ${ms}ms: $(printf %.0f "$(calc "$HB_BEATS / $HB_SECS")") heartbeats/s"
	else
		note hb_rate natkeep "failed"
	fi
	stop "$HOLDER"
	stop "$RELAY_PID"
}

# Relays whose descriptors are one process's limit (socat forks instead).
MEM_PER_PROCESS_LIMITED=" natkeep nginx haproxy "
# The heartbeat CPU is measured with the largest idle UDP count natkeep can hold.
HB_N=""
for n in $IDLE_COUNTS; do
	if ((n + 500 <= NOFILE && n + 500 <= PORT_RANGE)); then HB_N=$n; fi
done

for n in $IDLE_COUNTS; do
	key=$((n / 1000))k
	for tgt in natkeep socat nginx haproxy; do
		if [[ $tgt != natkeep ]] && ! has_peer $tgt; then continue; fi
		if ((n > 10000)) && [[ $tgt != natkeep ]]; then
			note "udp_mem_$key" "$tgt" "not run"
			note "tcp_mem_$key" "$tgt" "not run"
			continue
		fi
		# UDP: natkeep and nginx hold one upstream socket per flow, each on
		# its own ephemeral port; socat forks a process per flow.
		if [[ $tgt != haproxy ]]; then
			if [[ $tgt != socat ]] && ((n + 500 > NOFILE || n + 500 > PORT_RANGE)); then
				note "udp_mem_$key" "$tgt" "skipped: needs $n fds and ports; limit $NOFILE fds, $PORT_RANGE ports"
				log "UDP idle $key via $tgt skipped: $n upstream sockets need $n fds and ephemeral ports (RLIMIT_NOFILE $NOFILE, ip_local_port_range $PORT_RANGE)"
			else
				hb=""
				if [[ $tgt == natkeep && $n == "$HB_N" ]]; then hb=1; fi
				idle "$tgt" udp "$n" "$key" "$hb"
			fi
		fi
		if [[ $tgt == natkeep ]] && ((n > 10000 && NOFILE < 2 * n + 1000)); then
			note "tcp_mem_$key" "$tgt" "skipped: needs >$((2 * n)) fds, limit $NOFILE"
			log "TCP idle $key via $tgt skipped: needs more than $((2 * n)) fds, RLIMIT_NOFILE is $NOFILE"
			continue
		fi
		idle "$tgt" tcp "$n" "$key"
	done
done
if [[ -z $HB_N ]]; then
	note hb_cpu natkeep "skipped: no idle count fits the fd limit and port range"
fi

# ---- report --------------------------------------------------------------------

echo
echo "natkeep-bench: $(date -u +%Y-%m-%dT%H:%MZ), $(uname -r), $NCPU CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), relay pinned to core $CORE_RELAY, load and servers to core $CORE_LOAD; quick=$QUICK, repeats=$REPEATS, rr ${RR_S}s, medians shown"
echo
"$NB" table -in "$RES"
