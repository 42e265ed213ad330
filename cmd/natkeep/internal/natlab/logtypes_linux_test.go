package natlab

import (
	"strings"
	"testing"
)

func TestCheckLogTypes(t *testing.T) {
	good := `{"msg":"a","upstream":"127.0.0.1:9","drain_timeout":"15s","n":1}
not json
{"msg":"b","upstream":"10.0.0.1:5","n":2,"route":{"listen":":1"}}`
	if n, err := CheckLogTypes([]string{good}); err != nil || n != 2 {
		t.Fatalf("consistent lines: %d, %v", n, err)
	}
	bad := `{"msg":"c","upstream":{"IP":"127.0.0.1","Port":9},"drain_timeout":15000000000}`
	_, err := CheckLogTypes([]string{good, bad})
	if err == nil || !strings.Contains(err.Error(), `key "upstream" has 2 types`) || !strings.Contains(err.Error(), `key "drain_timeout" has 2 types`) {
		t.Fatalf("mixed types: %v", err)
	}
}
