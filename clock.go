package idem

import (
	"math"
	"time"
)

// epoch is the origin of the package's monotonic clock, mono. It is set
// once, when the package is initialised, and never changed.
var epoch = time.Now()

// mono returns the time elapsed since epoch, on the monotonic clock. It
// reads one clock where time.Now reads two (the wall clock too), which
// matters on the hot path of Do; and wall clock steps do not move it. A
// time.Time t from time.Now converts to this scale as t.Sub(epoch),
// without reading a clock. In a testing/synctest bubble it follows the
// bubble's fake clock, and is then negative: only differences of its
// values mean anything.
func mono() time.Duration { return time.Since(epoch) }

// monoAdd returns t+d on mono's scale, or the end of the scale when that
// overflows (a TTL of math.MaxInt64 means forever).
func monoAdd(t, d time.Duration) time.Duration {
	if d > 0 && t > math.MaxInt64-d {
		return math.MaxInt64
	}
	return t + d
}
