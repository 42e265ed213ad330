package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The results file run.sh writes is tab-separated, one record a line:
//
//	m  KEY  LABEL  BETTER  DECIMALS  [minus-direct:BASEKEY]   a metric (row), in table order
//	v  KEY  TARGET VALUE                                       a measurement; repeats give the median
//	n  KEY  TARGET TEXT                                        a note shown in that cell
//
// BETTER is "higher", "lower" or "none"; TARGET is direct, natkeep, socat,
// nginx or haproxy. A minus-direct row shows, per target, the median of
// BASEKEY minus the direct median of BASEKEY (added latency).

var tableTargets = []string{"direct", "natkeep", "socat", "nginx", "haproxy"}
var tablePeers = []string{"socat", "nginx", "haproxy"}

type metricDef struct {
	key, label, better string
	decimals           int
	minusDirect        string
}

func runTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	in := fs.String("in", "", "results file written by run.sh")
	_ = fs.Parse(args)
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	var defs []metricDef
	vals := map[string]map[string][]float64{}
	notes := map[string]map[string][]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) == 0 || fields[0] == "" || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch {
		case fields[0] == "m" && len(fields) >= 5:
			d := metricDef{key: fields[1], label: fields[2], better: fields[3]}
			d.decimals, _ = strconv.Atoi(fields[4])
			if len(fields) >= 6 {
				d.minusDirect, _ = strings.CutPrefix(fields[5], "minus-direct:")
			}
			if i := slices.IndexFunc(defs, func(x metricDef) bool { return x.key == d.key }); i >= 0 {
				defs[i] = d // a later definition (e.g. a label with the real count) wins
			} else {
				defs = append(defs, d)
			}
		case fields[0] == "v" && len(fields) >= 4:
			v, err := strconv.ParseFloat(strings.TrimSpace(fields[3]), 64)
			if err != nil {
				fmt.Fprintf(os.Stderr, "table: line %d: bad value %q\n", line, fields[3])
				continue
			}
			if vals[fields[1]] == nil {
				vals[fields[1]] = map[string][]float64{}
			}
			vals[fields[1]][fields[2]] = append(vals[fields[1]][fields[2]], v)
		case fields[0] == "n" && len(fields) >= 4:
			if notes[fields[1]] == nil {
				notes[fields[1]] = map[string][]string{}
			}
			notes[fields[1]][fields[2]] = append(notes[fields[1]][fields[2]], strings.Join(fields[3:], " "))
		default:
			fmt.Fprintf(os.Stderr, "table: line %d ignored\n", line)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}

	median := func(key, target string) (float64, bool) {
		xs := slices.Clone(vals[key][target])
		if len(xs) == 0 {
			return 0, false
		}
		slices.Sort(xs)
		if len(xs)%2 == 1 {
			return xs[len(xs)/2], true
		}
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2, true
	}
	value := func(d metricDef, target string) (float64, bool) {
		if d.minusDirect == "" {
			return median(d.key, target)
		}
		if target == "direct" {
			return 0, false
		}
		v, ok1 := median(d.minusDirect, target)
		base, ok2 := median(d.minusDirect, "direct")
		return v - base, ok1 && ok2
	}

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "| metric | %s | natkeep/direct | natkeep/best peer |\n", strings.Join(tableTargets, " | "))
	fmt.Fprintf(w, "|---|%s---|---|\n", strings.Repeat("---:|", len(tableTargets)))
	for _, d := range defs {
		cells := []string{d.label}
		for _, t := range tableTargets {
			cell := "-"
			if v, ok := value(d, t); ok {
				cell = strconv.FormatFloat(v, 'f', d.decimals, 64)
			}
			if ns := notes[d.key][t]; len(ns) > 0 {
				txt := strings.Join(ns, "; ")
				if cell == "-" {
					cell = txt
				} else {
					cell += " [" + txt + "]"
				}
			}
			cells = append(cells, cell)
		}
		nk, okN := value(d, "natkeep")
		ratioDirect := "-"
		if dv, okD := value(d, "direct"); okN && okD && dv != 0 && d.minusDirect == "" {
			ratioDirect = fmt.Sprintf("%.2f", nk/dv)
		}
		ratioPeer := "-"
		if okN && (d.better == "higher" || d.better == "lower") {
			best, bestName := 0.0, ""
			for _, p := range tablePeers {
				v, ok := value(d, p)
				if !ok {
					continue
				}
				if bestName == "" || (d.better == "higher" && v > best) || (d.better == "lower" && v < best) {
					best, bestName = v, p
				}
			}
			if bestName != "" && best != 0 {
				ratioPeer = fmt.Sprintf("%.2f (%s)", nk/best, bestName)
			}
		}
		cells = append(cells, ratioDirect, ratioPeer)
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	return nil
}
