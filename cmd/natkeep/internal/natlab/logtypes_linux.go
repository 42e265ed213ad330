package natlab

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Every JSON log line that processes started by the lab print is checked
// at the end of the run: one key, one JSON type, across all of them, so
// that log pipelines that map field types never meet a key that is a
// number in one line and a string (or an object) in another.

var logProcs struct {
	mu    sync.Mutex
	procs []*Proc
}

// remember registers p for the end-of-run log check.
func remember(p *Proc) {
	logProcs.mu.Lock()
	logProcs.procs = append(logProcs.procs, p)
	logProcs.mu.Unlock()
}

// jsonType names the JSON type of a decoded value.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "bool"
	case float64, json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// logKeyTypes records the type of every key of obj (nested keys as a.b)
// into types, with an example line for each (key, type).
func logKeyTypes(prefix string, obj map[string]any, line string, types map[string]map[string]string) {
	for k, v := range obj {
		key := prefix + k
		typ := jsonType(v)
		if types[key] == nil {
			types[key] = map[string]string{}
		}
		if _, ok := types[key][typ]; !ok {
			types[key][typ] = line
		}
		if m, ok := v.(map[string]any); ok {
			logKeyTypes(key+".", m, line, types)
		}
	}
}

// CheckLogTypes checks the JSON lines in outputs and returns how many lines
// it read and an error naming each key seen with more than one type.
func CheckLogTypes(outputs []string) (lines int, err error) {
	types := map[string]map[string]string{}
	for _, out := range outputs {
		for _, line := range strings.Split(out, "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var obj map[string]any
			if json.Unmarshal([]byte(line), &obj) != nil {
				continue
			}
			lines++
			logKeyTypes("", obj, line, types)
		}
	}
	var bad []string
	for key, ts := range types {
		if len(ts) > 1 {
			var desc []string
			for typ, ex := range ts {
				desc = append(desc, fmt.Sprintf("%s in %s", typ, ex))
			}
			sort.Strings(desc)
			bad = append(bad, fmt.Sprintf("key %q has %d types: %s", key, len(ts), strings.Join(desc, "; ")))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		return lines, fmt.Errorf("log keys with more than one JSON type:\n%s", strings.Join(bad, "\n"))
	}
	return lines, nil
}

// checkRunLogs runs CheckLogTypes over every process of the run.
func checkRunLogs() (procs, lines int, err error) {
	logProcs.mu.Lock()
	outputs := make([]string, 0, len(logProcs.procs))
	for _, p := range logProcs.procs {
		outputs = append(outputs, p.Output())
	}
	logProcs.mu.Unlock()
	lines, err = CheckLogTypes(outputs)
	return len(outputs), lines, err
}
