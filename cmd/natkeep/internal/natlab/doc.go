// Package natlab is the end-to-end test fixture that runs real sockets and
// real processes inside Linux network namespaces behind a real MASQUERADE
// router:
//
//	client ns (app + natkeep)  --veth--  router ns (MASQUERADE)  --veth--  server ns
//	ClientAddr   RouterInner                RouterOuter   ServerAddr
//
// The server has no route back to the client subnet (only its own link), so
// a reply can only reach the client through the router's conntrack/NAT
// mapping. The router's conntrack timeouts are configurable per lab.
//
// Besides the lab it starts and watches processes (in a namespace or in
// the test's own), reads conntrack's table and events, builds the natkeep
// binary once per test binary, and provides the TestMain that removes that
// build and fails the run if a namespace leaked. Everything it creates is
// removed by the test's cleanup, also on failure; every command it runs is
// bounded in time. It needs root and iproute2, iptables and conntrack; New
// skips the test otherwise. Outside Linux the package is empty.
package natlab
