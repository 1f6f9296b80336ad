package idem

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// TestCleanupContext checks that cleanupContext acts as
// context.WithTimeout(context.WithoutCancel(ctx), d): values kept, the
// parent's cancellation ignored, Done and Err agreeing at the deadline and
// after end.
func TestCleanupContext(t *testing.T) {
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	cancel()
	c := newCleanupContext(parent, 30*time.Millisecond)
	if c.Value(ctxKey{}) != "v" {
		t.Error("value lost")
	}
	if c.Err() != nil || context.Cause(c) != nil {
		t.Fatalf("Err = %v, Cause = %v before the deadline, with the parent cancelled; want nil", c.Err(), context.Cause(c))
	}
	if d, ok := c.Deadline(); !ok || time.Until(d) > 30*time.Millisecond {
		t.Errorf("Deadline = %v, %v", d, ok)
	}
	// Done closes no earlier than the deadline (read from the clock, not
	// raced against other timers, which a loaded machine may fire late).
	deadline, _ := c.Deadline()
	select {
	case <-c.Done():
		if now := time.Now(); now.Before(deadline) {
			t.Fatalf("Done closed %v before the deadline", deadline.Sub(now))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Errorf("Err after the deadline = %v", c.Err())
	}

	// Err sees the deadline before anyone called Done, and Done is then
	// closed at once.
	c = newCleanupContext(context.Background(), time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Errorf("Err after the deadline, Done never called = %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done open while Err reports the deadline")
	}

	// end cancels; a child context sees it.
	c = newCleanupContext(context.Background(), time.Hour)
	child, stop := context.WithCancel(c)
	defer stop()
	c.end()
	select {
	case <-child.Done():
	case <-time.After(time.Second):
		t.Fatal("child not cancelled by end")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Errorf("Err after end = %v", c.Err())
	}
}

// TestCleanupContextErrStable checks that Err, once it returns an error,
// returns the same one, when the deadline and end race.
func TestCleanupContextErrStable(t *testing.T) {
	for range 20000 {
		c := newCleanupContext(context.Background(), 0)
		done := make(chan struct{})
		go func() { c.end(); close(done) }()
		first := c.Err()
		<-done
		if first == nil || c.Err() != first {
			t.Fatalf("Err returned %v, then %v", first, c.Err())
		}
	}
}
