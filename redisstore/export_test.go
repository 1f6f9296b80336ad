package redisstore

// UseLegacyAcquire makes s acquire keys as it does on servers older than
// Redis 7.0 (a pipeline of GET and redislock's obtain script), so that the
// tests cover that path on a newer server.
func UseLegacyAcquire(s *Store) { s.legacy.Store(true) }

// LegacyAcquire reports whether s acquires keys the older servers' way.
func LegacyAcquire(s *Store) bool { return s.legacy.Load() }
