// Command client is the application of the container tests: see package
// testpeers. It exits 0 when every check passed, 1 otherwise, and logs one
// JSON line per step on stdout.
//
// Its addresses default to the environment a legacy app would read:
// SIP_SERVER (UDP host:port), DB_HOST and DB_PORT (TCP).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/natkeep/natkeep/deploy/internal/testpeers"
)

var log = slog.New(slog.NewJSONHandler(os.Stdout, nil))

func main() {
	udpAddr := flag.String("udp", os.Getenv("SIP_SERVER"), "natkeep's UDP listener (host:port)")
	tcpAddr := flag.String("tcp", net.JoinHostPort(os.Getenv("DB_HOST"), os.Getenv("DB_PORT")), "natkeep's TCP listener (host:port)")
	heartbeats := flag.Int("heartbeats", 3, "heartbeats the upstream must see while the client is silent")
	wait := flag.Duration("wait", 60*time.Second, "longest wait for the pushed datagram")
	flag.Parse()

	if err := run(*udpAddr, *tcpAddr, *heartbeats, *wait); err != nil {
		log.Error("FAIL", "err", err.Error())
		os.Exit(1)
	}
	log.Info("PASS")
}

func run(udpAddr, tcpAddr string, heartbeats int, wait time.Duration) error {
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	// Datagrams pass byte for byte, up to the largest a UDP/IPv4 packet holds
	// (with the echo prefix).
	for _, size := range []int{1, 1200, 65507 - len(testpeers.EchoPrefix)} {
		payload := make([]byte, size)
		if _, err := rand.Read(payload); err != nil {
			return err
		}
		if err := roundTrip(c, payload, append([]byte(testpeers.EchoPrefix), payload...)); err != nil {
			return fmt.Errorf("UDP %d bytes: %w", size, err)
		}
		log.Info("udp relayed", "bytes", size)
	}

	// Ask the upstream to push once it has seen heartbeats, then stay silent:
	// only natkeep can send them, on this flow's upstream socket.
	token := randomToken()
	req := fmt.Sprintf("%s%d %s", testpeers.PushRequest, heartbeats, token)
	if err := roundTrip(c, []byte(req), []byte(testpeers.PushArmed+token)); err != nil {
		return fmt.Errorf("push request: %w", err)
	}
	log.Info("silent", "until", "push", "heartbeats", heartbeats)
	start := time.Now()
	want := fmt.Sprintf("%s heartbeats=%d", token, heartbeats)
	buf := make([]byte, 65536)
	if err := c.SetReadDeadline(start.Add(wait)); err != nil {
		return err
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("waiting for the push after %d heartbeats: %w", heartbeats, err)
		}
		got := string(buf[:n])
		if got == testpeers.PushArmed+token {
			continue // a duplicate ack
		}
		if got != want {
			// An empty datagram here would be a heartbeat leaking to the app.
			return fmt.Errorf("while silent, got %q (%d bytes), want %q", got, n, want)
		}
		break
	}
	log.Info("udp push received", "after", time.Since(start).String(), "heartbeats", heartbeats)

	if err := tcpEcho(tcpAddr); err != nil {
		return fmt.Errorf("TCP: %w", err)
	}
	return nil
}

// roundTrip sends b and waits for want, resending a few times: a datagram
// can be lost, even on a bridge.
func roundTrip(c net.Conn, b, want []byte) error {
	buf := make([]byte, 65536)
	var last error
	for try := 0; try < 5; try++ {
		if try > 0 {
			// After a refused or lost datagram; bounded by the five tries.
			time.Sleep(200 * time.Millisecond)
		}
		if _, err := c.Write(b); err != nil {
			last = err
			continue
		}
		if err := c.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		for {
			n, err := c.Read(buf)
			if err != nil {
				last = err
				break
			}
			if bytes.Equal(buf[:n], want) {
				return nil
			}
			if !strings.HasPrefix(string(buf[:n]), testpeers.PushArmed) {
				return fmt.Errorf("got %d bytes %.40q, want %d bytes %.40q", n, buf[:n], len(want), want)
			}
		}
	}
	return fmt.Errorf("no reply after 5 tries: %w", last)
}

// tcpEcho sends a stream, half-closes and reads the echo to its end: the
// upstream's half-close must come back through natkeep as EOF.
func tcpEcho(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	payload := make([]byte, 1<<20)
	if _, err := rand.Read(payload); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo differs: %d bytes back of %d", len(got), len(payload))
	}
	log.Info("tcp relayed", "bytes", len(payload))
	return nil
}

func randomToken() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
