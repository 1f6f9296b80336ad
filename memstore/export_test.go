package memstore

// ReclaimBatch exposes reclaimBatch to the tests: the most expired leases,
// and the most expired records, that one call reclaims.
const ReclaimBatch = reclaimBatch
