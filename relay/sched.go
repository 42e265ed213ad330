package relay

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// schedTick is the granularity of flow wake-ups.
const schedTick = int64(50 * time.Millisecond)

// scheduler wakes flows when their next heartbeat or expiry is due: one
// goroutine, one timer and a min-heap for all of a route's flows, so 100k
// idle flows cost a heap entry each rather than a sleeping goroutine.
// The per-datagram path never touches it: flows record activity in atomics
// and the scheduler re-reads them when it wakes a flow.
type scheduler struct {
	mu   sync.Mutex
	h    flowHeap
	kick chan struct{}
	done chan struct{}
	once sync.Once
}

func (s *scheduler) init() {
	s.kick = make(chan struct{}, 1)
	s.done = make(chan struct{})
}

// add queues a new flow for its first service at now (which computes its real deadline).
func (s *scheduler) add(f *flow, now int64) {
	s.mu.Lock()
	f.wake = now
	heap.Push(&s.h, f)
	first := s.h[0] == f
	s.mu.Unlock()
	if first {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// wakeAll services every queued flow at now (a learned interval got
// shorter: flows must not wait out the old one).
func (s *scheduler) wakeAll(now int64) {
	s.mu.Lock()
	for _, f := range s.h {
		f.wake = min(f.wake, now)
	}
	heap.Init(&s.h)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *scheduler) stop() { s.once.Do(func() { close(s.done) }) }

// run services due flows until ctx ends or stop is called. service returns
// the flow's next wake time, or 0 to drop it.
func (s *scheduler) run(ctx context.Context, service func(*flow, int64) int64) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var due []*flow
	for {
		now := mono()
		s.mu.Lock()
		for len(s.h) > 0 && s.h[0].wake <= now {
			due = append(due, heap.Pop(&s.h).(*flow))
		}
		s.mu.Unlock()
		for i, f := range due {
			if next := service(f, now); next > 0 {
				s.mu.Lock()
				// Round up to a tick, so flows due close together are
				// serviced in one wake-up: heartbeats are jittered by 20%
				// anyway, and at 100k flows this halves the scheduler's CPU.
				f.wake = (next + schedTick - 1) / schedTick * schedTick
				heap.Push(&s.h, f)
				s.mu.Unlock()
			}
			due[i] = nil
		}
		due = due[:0]
		wait := time.Hour
		s.mu.Lock()
		if len(s.h) > 0 {
			wait = time.Duration(s.h[0].wake - mono())
		}
		s.mu.Unlock()
		t.Reset(max(wait, 0))
		select {
		case <-t.C:
		case <-s.kick:
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
	}
}

// flowHeap orders flows by wake time.
type flowHeap []*flow

func (h flowHeap) Len() int           { return len(h) }
func (h flowHeap) Less(i, j int) bool { return h[i].wake < h[j].wake }
func (h flowHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j) // one entry per flow, and each holds a descriptor: far below 1<<31
}
func (h *flowHeap) Push(x any) {
	f := x.(*flow)
	f.idx = int32(len(*h))
	*h = append(*h, f)
}
func (h *flowHeap) Pop() any {
	old := *h
	n := len(old) - 1
	f := old[n]
	old[n] = nil
	f.idx = -1
	*h = old[:n]
	return f
}
