package main

import (
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram: exact below 128 ns, then 128
// buckets per power of two (relative error under 0.8%). Recording never
// allocates, so the load generator does not disturb what it measures.
type hist struct {
	counts [histBuckets]uint64
	total  uint64
	max    int64
}

const (
	histSub     = 128
	histBuckets = histSub + 40*histSub // up to 2^47 ns, far beyond any timeout here
)

func histIndex(v int64) int {
	if v < histSub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 8 // v>>e is in [128, 255]
	i := histSub + e*histSub + int(uint64(v)>>e) - histSub
	return min(i, histBuckets-1)
}

// histValue returns the middle of bucket i.
func histValue(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	e := (i - histSub) / histSub
	m := int64((i-histSub)%histSub + histSub)
	return m<<e + (int64(1)<<e)/2
}

func (h *hist) record(d time.Duration) {
	v := int64(d)
	h.counts[histIndex(v)]++
	h.total++
	h.max = max(h.max, v)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0..1) in nanoseconds.
func (h *hist) quantile(q float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(histValue(i), h.max)
		}
	}
	return h.max
}

// us converts nanoseconds to microseconds, rounded to 0.1.
func us(ns int64) float64 { return float64(ns/100) / 10 }
