package sockopt

import (
	"testing"
	"time"
)

func TestKeepaliveValidate(t *testing.T) {
	ok := Keepalive{Idle: 25 * time.Second, Interval: 5 * time.Second, Count: 3}
	tests := []struct {
		name string
		k    Keepalive
		want string // "" means valid
	}{
		{"typical", ok, ""},
		{"all minimum", Keepalive{Idle: time.Second, Interval: time.Second, Count: 1}, ""},
		{"all maximum", Keepalive{Idle: 32767 * time.Second, Interval: 32767 * time.Second, Count: 127}, ""},

		{"idle zero", Keepalive{Idle: 0, Interval: 5 * time.Second, Count: 3}, "keepalive idle 0s out of range 1s..32767s"},
		{"idle negative", Keepalive{Idle: -time.Second, Interval: 5 * time.Second, Count: 3}, "keepalive idle -1s out of range 1s..32767s"},
		{"idle sub-second", Keepalive{Idle: 999 * time.Millisecond, Interval: 5 * time.Second, Count: 3}, "keepalive idle 0.999s out of range 1s..32767s"},
		{"idle just above max", Keepalive{Idle: 32768 * time.Second, Interval: 5 * time.Second, Count: 3}, "keepalive idle 32768s out of range 1s..32767s"},
		{"idle 40000s", Keepalive{Idle: 40000 * time.Second, Interval: 5 * time.Second, Count: 3}, "keepalive idle 40000s out of range 1s..32767s"},
		{"idle max plus 1ns", Keepalive{Idle: 32767*time.Second + 1, Interval: 5 * time.Second, Count: 3}, "keepalive idle 32767.000000001s out of range 1s..32767s"},
		{"idle fractional", Keepalive{Idle: 1500 * time.Millisecond, Interval: 5 * time.Second, Count: 3}, "keepalive idle 1.5s is not a whole number of seconds"},
		{"idle min plus 1ns", Keepalive{Idle: time.Second + 1, Interval: 5 * time.Second, Count: 3}, "keepalive idle 1.000000001s is not a whole number of seconds"},

		{"interval zero", Keepalive{Idle: 25 * time.Second, Interval: 0, Count: 3}, "keepalive interval 0s out of range 1s..32767s"},
		{"interval sub-second", Keepalive{Idle: 25 * time.Second, Interval: 500 * time.Millisecond, Count: 3}, "keepalive interval 0.5s out of range 1s..32767s"},
		{"interval just above max", Keepalive{Idle: 25 * time.Second, Interval: 32768 * time.Second, Count: 3}, "keepalive interval 32768s out of range 1s..32767s"},
		{"interval fractional", Keepalive{Idle: 25 * time.Second, Interval: 2*time.Second + 250*time.Millisecond, Count: 3}, "keepalive interval 2.25s is not a whole number of seconds"},

		{"count zero", Keepalive{Idle: 25 * time.Second, Interval: 5 * time.Second, Count: 0}, "keepalive count 0 out of range 1..127"},
		{"count negative", Keepalive{Idle: 25 * time.Second, Interval: 5 * time.Second, Count: -1}, "keepalive count -1 out of range 1..127"},
		{"count just above max", Keepalive{Idle: 25 * time.Second, Interval: 5 * time.Second, Count: 128}, "keepalive count 128 out of range 1..127"},

		{"zero value reports every field", Keepalive{},
			"keepalive idle 0s out of range 1s..32767s\n" +
				"keepalive interval 0s out of range 1s..32767s\n" +
				"keepalive count 0 out of range 1..127"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.k.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate(%+v) = %q, want nil", tt.k, err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate(%+v) = nil, want %q", tt.k, tt.want)
			case tt.want != "" && err.Error() != tt.want:
				t.Fatalf("Validate(%+v) = %q, want %q", tt.k, err, tt.want)
			}
		})
	}
}

func TestMaxUserTimeout(t *testing.T) {
	if want := 2147483647 * time.Millisecond; MaxUserTimeout != want {
		t.Fatalf("MaxUserTimeout = %v, want %v (INT_MAX ms)", MaxUserTimeout, want)
	}
}

func TestValidateUserTimeout(t *testing.T) {
	const rng = " out of range 1ms..2147483647ms (or 0 for off)"
	tests := []struct {
		d    time.Duration
		want string // "" means valid
	}{
		{0, ""},
		{time.Millisecond, ""},
		{30 * time.Second, ""},
		{MaxUserTimeout, ""},
		{MaxUserTimeout - time.Millisecond, ""},

		{-time.Millisecond, "user timeout -1ms" + rng},
		{1, "user timeout 0.000001ms" + rng},
		{999 * time.Microsecond, "user timeout 0.999ms" + rng},
		{MaxUserTimeout + time.Millisecond, "user timeout 2147483648ms" + rng},
		{MaxUserTimeout + 1, "user timeout 2147483647.000001ms" + rng},
		{1500 * time.Microsecond, "user timeout 1.5ms is not a whole number of milliseconds"},
		{time.Millisecond + 1, "user timeout 1.000001ms is not a whole number of milliseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.d.String(), func(t *testing.T) {
			err := ValidateUserTimeout(tt.d)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ValidateUserTimeout(%v) = %q, want nil", tt.d, err)
			case tt.want != "" && err == nil:
				t.Fatalf("ValidateUserTimeout(%v) = nil, want %q", tt.d, tt.want)
			case tt.want != "" && err.Error() != tt.want:
				t.Fatalf("ValidateUserTimeout(%v) = %q, want %q", tt.d, err, tt.want)
			}
		})
	}
}
