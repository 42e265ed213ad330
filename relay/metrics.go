package relay

import (
	"github.com/natkeep/natkeep/keepalive"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are natkeep's Prometheus collectors. Vectors are labelled by route
// (and protocol); each route resolves its children once at start, so the
// per-datagram path touches only pre-resolved counters, never a label map.
type Metrics struct {
	flowsActive     *prometheus.GaugeVec
	flowsCreated    *prometheus.CounterVec
	flowsExpired    *prometheus.CounterVec
	flowsRefused    *prometheus.CounterVec
	flowsEvicted    *prometheus.CounterVec
	datagrams       *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	drops           *prometheus.CounterVec
	heartbeats      *prometheus.CounterVec
	replies         *prometheus.CounterVec
	rtt             *prometheus.HistogramVec
	deadPeers       *prometheus.CounterVec
	revivedPeers    *prometheus.CounterVec
	unansweredFlows *prometheus.CounterVec
	notAnswering    *prometheus.GaugeVec
	heals           *prometheus.CounterVec
	echoes          *prometheus.CounterVec
	reconnects      *prometheus.CounterVec
	rebinds         *prometheus.CounterVec
	mappingChanges  *prometheus.CounterVec
	stunAnswered    *prometheus.CounterVec
	stunErrors      *prometheus.CounterVec
	connsActive     *prometheus.GaugeVec
	connsTotal      *prometheus.CounterVec
	connEnds        *prometheus.CounterVec
	tcpBytes        *tcpBytes
	dialSeconds     *prometheus.HistogramVec
	listenerUp      *prometheus.GaugeVec
	resolveFailures *prometheus.CounterVec
	hbInterval      *prometheus.GaugeVec
	pathLifetime    *prometheus.GaugeVec
	pathHops        *prometheus.GaugeVec
	pathState       *prometheus.GaugeVec
	pathProbes      *prometheus.CounterVec
	pathRelearns    *prometheus.CounterVec
	pathDatagrams   *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	// udp_* and tcp_* series carry only the route: their name says the
	// protocol. The two that serve both protocols also carry proto.
	route, both := []string{"route"}, []string{"route", "proto"}
	cv := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "natkeep", Name: name, Help: help}, append(route[:1:1], extra...))
	}
	gv := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "natkeep", Name: name, Help: help}, route)
	}
	m := &Metrics{
		flowsActive:     gv("udp_flows_active", "UDP flows currently open."),
		flowsCreated:    cv("udp_flows_created_total", "UDP flows created."),
		flowsExpired:    cv("udp_flows_expired_total", "UDP flows forgotten after the idle timeout."),
		flowsRefused:    cv("udp_flows_refused_total", "New UDP flows refused, by reason: limit (max_flows), source_quota (max_flows_per_source), descriptors or ports (the machine-derived budget).", "reason"),
		flowsEvicted:    cv("udp_flows_evicted_total", "UDP flows closed to make room for a flow from a source below its fair share of a full route."),
		datagrams:       cv("udp_datagrams_total", "Application datagrams relayed, by direction (upstream = client to server).", "direction"),
		bytes:           cv("udp_bytes_total", "Application payload bytes relayed, by direction.", "direction"),
		drops:           cv("udp_drops_total", "Datagrams not relayed, by reason.", "reason"),
		heartbeats:      cv("udp_heartbeats_sent_total", "Heartbeats sent upstream."),
		replies:         cv("udp_heartbeat_replies_total", "Heartbeat replies received and consumed."),
		rtt:             prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "natkeep", Name: "udp_heartbeat_rtt_seconds", Help: "Round-trip time of answered heartbeats.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, route),
		deadPeers:       cv("udp_dead_peers_total", "Flows whose peer was declared dead after missed heartbeat replies."),
		revivedPeers:    cv("udp_revived_peers_total", "Dead peers heard from again, by what was heard (data: any datagram from the upstream; reply: a heartbeat reply).", "via"),
		unansweredFlows: cv("udp_unanswered_flows_total", "Flows whose heartbeats went unanswered dead_after times while the route's upstream had never answered one (it does not speak the heartbeat protocol; not a dead peer)."),
		notAnswering:    gv("udp_upstream_not_answering", "1 while the route's upstream has never answered a heartbeat after dead_after tries: liveness and RTT are off, heartbeats still keep the mapping."),
		heals:           cv("udp_heal_heartbeats_total", "Heartbeats sent at the normal TTL on a TTL-limited route, to re-create a mapping the limited ones cannot."),
		echoes:          cv("udp_heartbeat_echoes_total", "Datagrams from the upstream that repeat the route's heartbeat payload (echoes): delivered unless a reply matcher takes them, never extending a flow's life."),
		reconnects:      cv("udp_upstream_reconnects_total", "Flows of dead peers pointed at the upstream name's new address from the same local port (on_dead=keep)."),
		rebinds:         cv("udp_rebinds_total", "Upstream sockets replaced with a fresh local port (new NAT mapping)."),
		mappingChanges:  cv("udp_nat_mapping_changes_total", "STUN XOR-MAPPED-ADDRESS changes between replies (NAT rebinding)."),
		stunAnswered:    cv("udp_stun_requests_answered_total", "STUN Binding Requests answered by a responder route."),
		stunErrors:      cv("udp_stun_requests_rejected_total", "STUN Binding Requests a responder route answered with 420 (Unknown Attribute)."),
		connsActive:     gv("tcp_connections_active", "TCP connections currently proxied."),
		connsTotal:      cv("tcp_connections_total", "TCP connections accepted."),
		connEnds:        cv("tcp_connection_ends_total", "TCP connections ended, by reason.", "reason"),
		tcpBytes:        newTCPBytes(),
		dialSeconds:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "natkeep", Name: "tcp_dial_seconds", Help: "Upstream TCP connect latency.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, route),
		listenerUp:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "natkeep", Name: "listener_up", Help: "1 while the route's listener is bound."}, both),
		resolveFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "natkeep", Name: "resolve_failures_total", Help: "Failed DNS resolutions of the upstream name."}, both),
		hbInterval:      gv("udp_heartbeat_interval_seconds", "The heartbeat interval in force: as configured, or learned (interval=auto); 0 = heartbeats off."),
		pathLifetime:    gv("udp_path_binding_lifetime_seconds", "interval=auto: the longest silence a probe mapping was seen to survive at the last learning; 0 = not learned."),
		pathHops:        gv("udp_path_nat_hops", "ttl=auto: the learned NAT distance, the TTL of the route's heartbeats; 0 = not learned (normal TTL)."),
		pathState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "natkeep", Name: "udp_path_state",
			Help: "interval=auto: 1 for the route's path-learning state (learning, learned, no_stun: the upstream never answered STUN, no_response_port: it ignores RESPONSE-PORT), 0 for the others."}, []string{"route", "state"}),
		pathProbes:    cv("udp_path_probes_total", "Path probes finished, by kind (lifetime, hops, verify) and result (survived, expired, lost).", "kind", "result"),
		pathRelearns:  cv("udp_path_learnings_total", "Path learnings started, by reason (start, periodic, mapping_changed, verify_failed, retry).", "reason"),
		pathDatagrams: cv("udp_path_probe_datagrams_total", "Datagrams of path probes, by direction (sent, received): what learning costs.", "direction"),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{
			m.flowsActive, m.flowsCreated, m.flowsExpired, m.flowsRefused, m.flowsEvicted, m.datagrams, m.bytes,
			m.drops, m.heartbeats, m.replies, m.rtt, m.deadPeers, m.revivedPeers, m.unansweredFlows,
			m.notAnswering, m.heals, m.echoes, m.reconnects, m.rebinds,
			m.mappingChanges, m.stunAnswered, m.stunErrors, m.connsActive, m.connsTotal, m.connEnds, m.tcpBytes,
			m.dialSeconds, m.listenerUp, m.resolveFailures,
			m.hbInterval, m.pathLifetime, m.pathHops, m.pathState, m.pathProbes, m.pathRelearns, m.pathDatagrams,
		} {
			reg.MustRegister(c)
		}
	}
	return m
}

// Drop reasons for natkeep_udp_drops_total.
const (
	dropFlowLimit       = "flow_limit"          // new flow refused at UDP_MAX_FLOWS
	dropUpstreamRefused = "upstream_refused"    // ICMP port unreachable from the upstream
	dropUpstreamError   = "upstream_error"      // other send/receive error on the upstream socket
	dropClientError     = "client_error"        // sending to the client failed
	dropUnresolved      = "upstream_unresolved" // no upstream address known yet
	dropFlowSetup       = "flow_setup"          // could not open the flow's upstream socket
	dropStrayReply      = "stray_stun_reply"    // STUN response to a heartbeat we no longer track
	dropSTUNRateLimited = "stun_rate_limited"   // responder: Binding Request over its source's answer budget
	dropNoOrigDst       = "no_orig_dst"         // transparent route: datagram without its original destination
)

// udpStats are one UDP route's collectors, resolved once.
type udpStats struct {
	flowsActive                              prometheus.Gauge
	flowsCreated, flowsExpired, flowsEvicted prometheus.Counter
	refused                                  map[string]prometheus.Counter // by refusal reason; read-only after creation
	dgUp, dgDown, bytesUp, bytesDown         prometheus.Counter
	dropUpRefused, dropUpErr, dropClientErr  prometheus.Counter
	dropUnresolved, dropSetup, dropStray     prometheus.Counter
	dropLimit, dropNoOrigDst, dropSTUNRate   prometheus.Counter
	heartbeats, replies                      prometheus.Counter
	rtt                                      prometheus.Observer
	dead, rebinds, mapChanges, stunOK        prometheus.Counter
	stunErrors                               prometheus.Counter
	revivedData, revivedReply, unanswered    prometheus.Counter
	heals, echoes, reconnects                prometheus.Counter
	notAnswering                             prometheus.Gauge
	listenerUp                               prometheus.Gauge
	resolveFailures                          prometheus.Counter
	interval                                 prometheus.Gauge
}

// path resolves a route's path-learning collectors (interval=auto routes only).
func (m *Metrics) path(route string, interval prometheus.Gauge) *pathStats {
	l := prometheus.Labels{"route": route}
	s := &pathStats{
		route: route, lifetime: m.pathLifetime.With(l), hops: m.pathHops.With(l), interval: interval,
		phases: map[keepalive.PathPhase]prometheus.Gauge{}, probes: m.pathProbes, relearnVec: m.pathRelearns,
		sent: m.pathDatagrams.WithLabelValues(route, "sent"), received: m.pathDatagrams.WithLabelValues(route, "received"),
	}
	for _, p := range keepalive.PathPhases {
		s.phases[p] = m.pathState.WithLabelValues(route, p.String())
	}
	// Every series exists from the start, so a rate() over them works at once.
	for _, kind := range []string{"lifetime", "hops", "verify"} {
		for _, result := range []string{"survived", "expired", "lost"} {
			m.pathProbes.WithLabelValues(route, kind, result)
		}
	}
	for _, r := range []string{keepalive.RelearnStart, keepalive.RelearnPeriodic, keepalive.RelearnMappingChanged, keepalive.RelearnVerifyFailed, keepalive.RelearnRetry} {
		m.pathRelearns.WithLabelValues(route, r)
	}
	return s
}

func (m *Metrics) udp(route string) *udpStats {
	l, lp := prometheus.Labels{"route": route}, prometheus.Labels{"route": route, "proto": "udp"}
	drop := func(reason string) prometheus.Counter { return m.drops.WithLabelValues(route, reason) }
	st := &udpStats{
		dropLimit: drop(dropFlowLimit), dropNoOrigDst: drop(dropNoOrigDst), dropSTUNRate: drop(dropSTUNRateLimited),
		flowsActive: m.flowsActive.With(l), flowsCreated: m.flowsCreated.With(l),
		flowsExpired: m.flowsExpired.With(l), flowsEvicted: m.flowsEvicted.With(l), refused: map[string]prometheus.Counter{},
		dgUp: m.datagrams.WithLabelValues(route, "upstream"), dgDown: m.datagrams.WithLabelValues(route, "downstream"),
		bytesUp: m.bytes.WithLabelValues(route, "upstream"), bytesDown: m.bytes.WithLabelValues(route, "downstream"),
		dropUpRefused: drop(dropUpstreamRefused), dropUpErr: drop(dropUpstreamError), dropClientErr: drop(dropClientError),
		dropUnresolved: drop(dropUnresolved), dropSetup: drop(dropFlowSetup), dropStray: drop(dropStrayReply),
		heartbeats: m.heartbeats.With(l), replies: m.replies.With(l), rtt: m.rtt.With(l),
		dead: m.deadPeers.With(l), rebinds: m.rebinds.With(l),
		revivedData: m.revivedPeers.WithLabelValues(route, "data"), revivedReply: m.revivedPeers.WithLabelValues(route, "reply"),
		unanswered: m.unansweredFlows.With(l), notAnswering: m.notAnswering.With(l),
		heals: m.heals.With(l), echoes: m.echoes.With(l), reconnects: m.reconnects.With(l),
		mapChanges: m.mappingChanges.With(l), stunOK: m.stunAnswered.With(l), stunErrors: m.stunErrors.With(l),
		listenerUp: m.listenerUp.With(lp), resolveFailures: m.resolveFailures.With(lp),
		interval: m.hbInterval.With(l),
	}
	for _, r := range refuseReasons {
		st.refused[r] = m.flowsRefused.WithLabelValues(route, r)
	}
	return st
}

// TCP connection end reasons for natkeep_tcp_connection_ends_total.
const (
	endClientClosed     = "client_closed"
	endUpstreamClosed   = "upstream_closed"
	endKeepaliveTimeout = "keepalive_timeout"
	endUserTimeout      = "user_timeout"
	endClientReset      = "client_reset"
	endUpstreamReset    = "upstream_reset"
	endDialError        = "dial_error"
	endLimit            = "conn_limit"
	endDrain            = "drain_timeout"
	endIdle             = "idle_timeout"
	endError            = "error"
)

var endReasons = []string{endClientClosed, endUpstreamClosed, endKeepaliveTimeout, endUserTimeout,
	endClientReset, endUpstreamReset, endDialError, endLimit, endDrain, endIdle, endError}

// tcpStats are one TCP route's collectors, resolved once.
type tcpStats struct {
	active          prometheus.Gauge
	total           prometheus.Counter
	ends            map[string]prometheus.Counter // read-only after creation
	dial            prometheus.Observer
	listenerUp      prometheus.Gauge
	resolveFailures prometheus.Counter
}

func (m *Metrics) tcp(route string) *tcpStats {
	l, lp := prometheus.Labels{"route": route}, prometheus.Labels{"route": route, "proto": "tcp"}
	s := &tcpStats{
		active: m.connsActive.With(l), total: m.connsTotal.With(l), ends: map[string]prometheus.Counter{},
		dial: m.dialSeconds.With(l), listenerUp: m.listenerUp.With(lp), resolveFailures: m.resolveFailures.With(lp),
	}
	for _, r := range endReasons {
		s.ends[r] = m.connEnds.WithLabelValues(route, r)
	}
	return s
}
