// Package routing decides which destination a new session goes to.
//
// A Route holds an ordered list of destinations, whether each is up, and a
// strategy. It is pure logic: it opens no sockets and reads no clock, so
// every rule below is tested without a network.
//
//   - first-available (read-write): sessions go to the current primary. The
//     primary is sticky: it moves only when it is marked down, to the first
//     destination in list order that is up, and it does not move back when
//     the old primary recovers. Reset moves it to the first destination in
//     list order that is up.
//   - next-available: like first-available, but a destination that was
//     marked down is never used again until Reset (MySQL Router's rule).
//   - round-robin (read-only): rotates over the destinations that are up.
//   - round-robin-with-fallback: round-robin, and when no destination is up
//     the primary of the fallback route.
//
// Health checks and failed dials report state with SetUp; Pick chooses.
package routing
