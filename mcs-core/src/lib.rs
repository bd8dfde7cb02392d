//! The pure core of the MCS agent, in the order data flows through it:
//!
//! 1. [`k8s`]: the objects read (`ServiceImport`s, `EndpointSlice`s, GKE's
//!    imports and their `Endpoints`);
//! 2. [`translate`]: a pure function from those objects to the desired
//!    dataplane state, with a report of what was skipped and why;
//! 3. [`maglev`]: the consistent-hashing tables of the service ports;
//! 4. [`sync`]: one idempotent sync that writes the difference through
//!    [`dataplane::Dataplane`], the narrow interface to the maps.
//!
//! Nothing here touches the kernel, the network or a clock: the crate does
//! not depend on aya, libc, tokio or kube, so the compiler keeps it that way.
//! The kernel side of [`dataplane::Dataplane`] lives in `mcs-agent`.
//!
//! Behind features, for the tests of other crates: `fake` ([`fake`], an
//! in-memory dataplane that records every write) and `testkit` ([`testkit`],
//! typed builders of the objects read).
#![warn(missing_docs, unreachable_pub)]

pub mod dataplane;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod k8s;
pub mod maglev;
pub mod sync;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod translate;
