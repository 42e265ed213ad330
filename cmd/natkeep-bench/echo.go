package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// echoStats count what the echo servers saw.
type echoStats struct {
	UDPDatagrams atomic.Int64
	UDPEmpty     atomic.Int64 // zero-length datagrams: natkeep's default heartbeat
	TCPConns     atomic.Int64
	TCPOpen      atomic.Int64
}

func (s *echoStats) snapshot() map[string]int64 {
	return map[string]int64{
		"udp_datagrams": s.UDPDatagrams.Load(),
		"udp_empty":     s.UDPEmpty.Load(),
		"tcp_conns":     s.TCPConns.Load(),
		"tcp_open":      s.TCPOpen.Load(),
	}
}

// runEcho serves UDP and TCP echo until SIGTERM/SIGINT (or -max-run). On
// SIGUSR1 it writes its counters to -stats-file.
func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	udpList := fs.String("udp", "", "UDP listen addresses, comma-separated")
	tcpList := fs.String("tcp", "", "TCP listen addresses, comma-separated")
	echoEmpty := fs.Bool("echo-empty", false, "echo zero-length datagrams too (by default they are counted and ignored, like a server ignoring keepalives)")
	statsFile := fs.String("stats-file", "", "write counters as JSON here on SIGUSR1")
	maxRun := fs.Duration("max-run", 2*time.Hour, "exit after this long even without a signal")
	_ = fs.Parse(args)
	if *statsFile != "" && statsSignal == nil {
		return errors.New("-stats-file: SIGUSR1 is not supported on this platform")
	}
	nofile := raiseNoFile()

	udpAddrs, err := splitAddrs(*udpList)
	if err != nil {
		return err
	}
	tcpAddrs, err := splitAddrs(*tcpList)
	if err != nil {
		return err
	}
	if len(udpAddrs)+len(tcpAddrs) == 0 {
		return errors.New("nothing to serve: give -udp and/or -tcp")
	}
	st := &echoStats{}
	var closers []func()
	for _, a := range udpAddrs {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		if err != nil {
			return err
		}
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		closers = append(closers, func() { c.Close() })
		go udpEcho(c, *echoEmpty, st)
	}
	for _, a := range tcpAddrs {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(a))
		if err != nil {
			return err
		}
		closers = append(closers, func() { l.Close() })
		go tcpEcho(l, st)
	}
	fmt.Fprintf(os.Stderr, "natkeep-bench echo: udp %v tcp %v (nofile %d)\n", udpAddrs, tcpAddrs, nofile)

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if statsSignal != nil {
		signal.Notify(sig, statsSignal)
	}
	deadline := time.NewTimer(*maxRun)
	defer deadline.Stop()
wait:
	for {
		select {
		case s := <-sig:
			if statsSignal != nil && s == statsSignal {
				writeReady(*statsFile, st.snapshot())
				continue
			}
			break wait
		case <-deadline.C:
			break wait
		}
	}
	for _, c := range closers {
		c()
	}
	printJSON(map[string]any{"mode": "echo", "stats": st.snapshot()})
	return nil
}

// udpEcho echoes on one socket from one goroutine: on the single core it is
// pinned to, more readers would only add scheduling.
func udpEcho(c *net.UDPConn, echoEmpty bool, st *echoStats) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED from an ICMP error: keep serving
		}
		st.UDPDatagrams.Add(1)
		if n == 0 {
			st.UDPEmpty.Add(1)
			if !echoEmpty {
				continue
			}
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// tcpEcho accepts and echoes every connection until the listener closes.
// Accept errors (EMFILE) back off instead of spinning.
func tcpEcho(l *net.TCPListener, st *echoStats) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		st.TCPConns.Add(1)
		st.TCPOpen.Add(1)
		go func() {
			defer st.TCPOpen.Add(-1)
			defer c.Close()
			// A small buffer: tcp-rate and tcp-idle exchange 64 bytes, and
			// 100k idle connections must not cost the echo server gigabytes.
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
