// Package keepalive decides when a flow sends a heartbeat, what the heartbeat
// carries and what a reply means. It is pure logic plus codecs over
// timestamps and byte slices: it opens no sockets, so tests drive it without
// a network or a clock.
package keepalive
