// Command upstream is the server of the container tests: see package
// testpeers.
package main

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/natkeep/natkeep/deploy/internal/testpeers"
)

var log = slog.New(slog.NewJSONHandler(os.Stdout, nil))

func main() {
	udpAddr := flag.String("udp", ":7000", "UDP listen address")
	tcpAddr := flag.String("tcp", ":7001", "TCP listen address")
	hbHex := flag.String("heartbeat", "", "natkeep's heartbeat payload in hex (empty: the empty datagram); counted, never echoed")
	flag.Parse()
	hb, err := hex.DecodeString(*hbHex)
	if err != nil {
		fail(fmt.Errorf("-heartbeat: %w", err))
	}

	uc, err := net.ListenPacket("udp", *udpAddr)
	if err != nil {
		fail(err)
	}
	tl, err := net.Listen("tcp", *tcpAddr)
	if err != nil {
		fail(err)
	}
	go serveUDP(uc.(*net.UDPConn), hb)
	go serveTCP(tl)
	log.Info("listening", "udp", uc.LocalAddr().String(), "tcp", tl.Addr().String())

	// PID 1 in a container gets no default signal handling: without this,
	// `docker stop` waits for its timeout and kills.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	log.Info("stopping", "signal", (<-sig).String())
}

func fail(err error) {
	log.Error("fatal", "err", err.Error())
	os.Exit(1)
}

// push is an armed push request.
type push struct {
	want, seen int
	token      string
}

func serveUDP(c *net.UDPConn, heartbeat []byte) {
	heartbeats := map[string]int{}
	pending := map[string]*push{}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			fail(err)
		}
		src := from.String()
		msg := buf[:n]
		switch {
		case bytes.Equal(msg, heartbeat):
			heartbeats[src]++
			log.Info("heartbeat", "from", src, "count", heartbeats[src])
			p := pending[src]
			if p == nil {
				continue
			}
			if p.seen++; p.seen < p.want {
				continue
			}
			delete(pending, src)
			reply := fmt.Sprintf("%s heartbeats=%d", p.token, p.seen)
			send(c, from, []byte(reply))
			log.Info("pushed", "to", src, "token", p.token, "heartbeats", p.seen)
		case strings.HasPrefix(string(msg), testpeers.PushRequest):
			count, token, _ := strings.Cut(strings.TrimPrefix(string(msg), testpeers.PushRequest), " ")
			want, err := strconv.Atoi(count)
			if err != nil || want < 1 || token == "" {
				log.Warn("bad push request", "from", src, "request", string(msg))
				continue
			}
			// A repeated request (the ack was lost) keeps its progress.
			if p := pending[src]; p == nil || p.token != token {
				pending[src] = &push{want: want, token: token}
			}
			send(c, from, []byte(testpeers.PushArmed+token))
			log.Info("push armed", "from", src, "token", token, "heartbeats", want)
		default:
			send(c, from, append([]byte(testpeers.EchoPrefix), msg...))
			log.Info("datagram", "from", src, "bytes", n)
		}
	}
}

func send(c *net.UDPConn, to *net.UDPAddr, b []byte) {
	if _, err := c.WriteToUDP(b, to); err != nil {
		log.Warn("send", "to", to.String(), "err", err.Error())
	}
}

func serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			fail(err)
		}
		go func() {
			defer c.Close()
			// Plain reads and writes: hide ReadFrom/WriteTo so that io.Copy
			// does not try to splice a socket into itself.
			n, err := io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			attrs := []any{"from", c.RemoteAddr().String(), "bytes", n}
			if err != nil {
				attrs = append(attrs, "err", err.Error())
			}
			log.Info("tcp echoed", attrs...)
		}()
	}
}
