package relay

// Stats is a snapshot of open flows and connections (tests only).
type Stats struct {
	UDPFlows, TCPConns int
}

// Stats returns the current number of open flows and connections.
func (r *Relay) Stats() Stats {
	var s Stats
	for _, u := range r.udp {
		s.UDPFlows += u.flowCount()
	}
	for _, t := range r.tcp {
		s.TCPConns += t.connCount()
	}
	return s
}
