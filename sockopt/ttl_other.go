//go:build !linux

package sockopt

// TTLControl is not supported on this platform.
func TTLControl(ipv6 bool, ttl int) ([]byte, error) {
	if ipv6 {
		return nil, notSupported("IPV6_HOPLIMIT")
	}
	return nil, notSupported("IP_TTL")
}
