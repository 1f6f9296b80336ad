// Package idemotel reports what idem's Do does as OpenTelemetry metrics and
// traces. It is written on the OpenTelemetry API alone: the application
// chooses the SDK, the exporters and the views.
//
//	op := idem.New[Req, Resp](store, idem.WithObserver(idemotel.New(
//		idemotel.WithMeterProvider(meterProvider),
//		idemotel.WithTracerProvider(tracerProvider),
//	)))
//
// Without options, New uses the global providers (otel.GetMeterProvider,
// otel.GetTracerProvider), which do nothing until the application installs
// SDK providers with otel.SetMeterProvider and otel.SetTracerProvider.
//
// # Metrics
//
// The instrumentation scope is ScopeName. Every instrument carries the
// attribute idem.namespace, the Operation's namespace (WithNamespace; "" by
// default). None carries the idempotency key, which is unbounded in number
// and may hold customer data.
//
//	idem.operation.duration  histogram, s     one point per call of Do: idem.outcome, and error.type when Do returned an error
//	idem.execution.duration  histogram, s     how long fn ran, in calls where it ran: idem.outcome
//	idem.wait.duration       histogram, s     per call that waited for an in-flight call, the total time it waited: idem.outcome
//	idem.record.size         histogram, By    the size of each record stored
//	idem.lease.losses        counter, {loss}  calls whose lease was lost (at most one per call)
//	idem.store.errors        counter, {error} failed store operations: idem.store.operation (acquire, wait, refresh, commit, release)
//	idem.execution.active    updown, {call}   calls of Do in progress: started, not yet returned (asynchronous)
//
// idem.outcome is idem.Outcome's String: executed, replayed, final_error,
// fn_error, held, not_stored, in_flight, key_reused, store_error,
// invalid_key, corrupt_record, canceled or invalid. error.type is the
// outcome's name too, except for a replayed final error, whose outcome is
// replayed and whose error.type is final_error; it is never an error's text.
//
// idem.execution.active counts calls, not executions of fn: the Observer is
// not told when fn starts, so a call waiting for the store or for an
// in-flight call counts too. It is an asynchronous (observable) up-down
// counter, kept in an atomic counter per namespace and read at collection,
// so that a call costs no measurement for it.
//
// Namespaces are meant to be few, one per Operation: past 1000 of them, the
// others are recorded as one, idem.namespace="_OTHER" with
// otel.metric.overflow=true (spans still name them).
//
// The histograms advise bucket boundaries fit for their units (from 100 µs
// to 60 s; from 64 B to 1 MiB); a View overrides them.
//
// # Traces
//
// Each call of Do is one span, named "idem.Do", of kind Internal, started
// when Do begins and ended when it returns. The store and fn are given its
// context, so that spans of an instrumented store client (go-redis, pgx) and
// of fn are its children. Its attributes are idem.namespace, idem.outcome,
// idem.replayed, and error.type when Do returned an error; with
// WithHashedKeys, also idem.key.hash. Its events are idem.wait
// (idem.wait.duration, in seconds), idem.lease.refresh
// (idem.lease.refresh.failed), idem.lease.lost, idem.store.error
// (idem.store.operation) and idem.commit.retry (idem.commit.attempt). A
// long fn is refreshed every third of the lease TTL: past the SDK's limit
// of events per span (128 by default), the oldest are dropped.
//
// The span's status is Error, with the outcome's name as description, when
// fn failed (fn_error, final_error, held) or idem or its store did
// (not_stored, store_error, corrupt_record, invalid). Refusals of the
// caller's request (key_reused, in_flight, invalid_key), a caller that went
// away (canceled) and replays, also of a final error, leave it unset: they
// carry error.type alone, as a 4xx leaves an HTTP server span unset. No error
// text is recorded, since it may quote the key or fn's data.
package idemotel
