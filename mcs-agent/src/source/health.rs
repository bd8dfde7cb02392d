//! How a source's connection to the API server is doing (`/status` and
//! `/metrics`): whether the last request it made (a watch, or API discovery)
//! succeeded, and by resource how many errors the watches have seen and when
//! they last heard from the server. The watchers and the discovery loop
//! write it; a watch error also asks the discovery loop to probe the server
//! at once (within its backoff), so the state comes back up as soon as the
//! server answers, even for a watch that has nothing new to say. The run
//! loop copies it out for the metrics. The file source has no server and
//! reports none.
use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// One watch (or API discovery).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchHealth {
    /// Errors seen since the start (failed requests, cut streams).
    pub errors: u64,
    /// The last error, until the watch hears from the server again.
    pub last_error: Option<String>,
    /// Unix time of the last event or list from the server; 0 before any.
    pub last_event_unix: f64,
}

/// The API server as the source sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiHealth {
    /// The last request to the server succeeded (a watch event or list, or
    /// API discovery); false before the first and after any error.
    pub up: bool,
    /// By resource (`discovery` for API discovery).
    pub watches: BTreeMap<String, WatchHealth>,
}

/// What the watchers and the discovery loop share.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<(bool, BTreeMap<&'static str, WatchHealth>)>,
    probe: Notify,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Health {
    fn with(&self, resource: &'static str, f: impl FnOnce(&mut bool, &mut WatchHealth)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (up, watches) = &mut *state;
        f(up, watches.entry(resource).or_default());
    }

    /// `resource`'s watch started: known, nothing heard yet.
    pub fn started(&self, resource: &'static str) {
        self.with(resource, |_, _| {});
    }

    /// `resource`'s watch (or discovery) heard from the server.
    pub fn event(&self, resource: &'static str) {
        self.with(resource, |up, w| {
            *up = true;
            w.last_error = None;
            w.last_event_unix = unix_now();
        });
    }

    /// `resource`'s watch (or discovery) failed with `error`: the server is
    /// down until a request succeeds again, and the discovery loop is asked
    /// to find out when.
    pub fn error(&self, resource: &'static str, error: &str) {
        self.with(resource, |up, w| {
            *up = false;
            w.errors += 1;
            w.last_error = Some(error.to_owned());
        });
        self.probe.notify_one();
    }

    /// Waits until a watch has failed since the last call.
    pub async fn probe_requested(&self) {
        self.probe.notified().await;
    }

    /// A copy of the state.
    #[must_use]
    pub fn snapshot(&self) -> ApiHealth {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        ApiHealth { up: state.0, watches: state.1.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_down_after_an_error_and_up_after_the_next_answer() {
        let h = Health::default();
        h.started("EndpointSlice");
        assert_eq!(h.snapshot().watches["EndpointSlice"], WatchHealth::default());
        assert!(!h.snapshot().up, "not up before anything was heard");
        h.event("EndpointSlice");
        assert!(h.snapshot().up);
        h.error("EndpointSlice", "500");
        h.error("ServiceImport", "connection refused");
        let s = h.snapshot();
        assert!(!s.up);
        assert_eq!((s.watches["EndpointSlice"].errors, s.watches["ServiceImport"].errors), (1, 1));
        // An answer to any request (discovery, here) brings it back up; each
        // watch keeps its error until it hears something itself.
        h.event("discovery");
        let s = h.snapshot();
        assert!(s.up);
        assert_eq!(s.watches["ServiceImport"].last_error.as_deref(), Some("connection refused"));
        h.event("ServiceImport");
        let s = h.snapshot();
        assert!(s.watches["ServiceImport"].last_error.is_none() && s.watches["ServiceImport"].last_event_unix > 0.0);
        assert_eq!(s.watches["ServiceImport"].errors, 1, "errors count up, never down");
    }
}
