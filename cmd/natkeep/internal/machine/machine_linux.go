package machine

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
)

// Read returns this host's facts; a fact that cannot be read is left zero.
func Read() Facts {
	f := Facts{CPUs: runtime.GOMAXPROCS(0)}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur != ^uint64(0) {
		f.NoFile = rl.Cur
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &lo, &hi); err == nil && lo > 0 && hi >= lo {
			f.PortLo, f.PortHi = lo, hi
		}
	}
	return f
}
