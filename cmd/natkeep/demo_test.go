package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDemo runs `natkeep demo` end to end (in process, on loopback) and
// checks what it prints: the exchange, heartbeats the server saw while the
// app was silent, the late push arriving, and the metrics that moved.
func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "-idle", "3s"}, map[string]string{}, &out, &errb); code != 0 {
		t.Fatalf("natkeep demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	text := out.String()
	for _, want := range []string{`server -> app: "welcome"`, `server -> app: "late push after 3s of app silence"`,
		"natkeep_udp_heartbeats_sent_total", "natkeep_udp_flows_created_total"} {
		if !strings.Contains(text, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, text)
		}
	}
	m := regexp.MustCompile(`heartbeats seen by the server: (\d+)\n`).FindAllStringSubmatch(text, -1)
	if len(m) != 3 {
		t.Fatalf("want 3 progress lines:\n%s", text)
	}
	if n, _ := strconv.Atoi(m[len(m)-1][1]); n < 2 {
		t.Fatalf("the server saw %d heartbeats in 3 s of silence at a 1 s interval:\n%s", n, text)
	}
}

func TestDemoBadArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "-idle", "1ms"}, map[string]string{}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-idle") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
