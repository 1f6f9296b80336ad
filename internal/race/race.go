//go:build race

// Package race tells tests whether the binary was built with the race
// detector, under which sync.Pool drops pooled items at random, so that
// allocation counts are not what they are in production.
package race

// Enabled is true when the binary was built with -race.
const Enabled = true
