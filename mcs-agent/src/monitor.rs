//! `mcs-agent monitor`: the datapath's events as they happen, like
//! `cilium-dbg monitor`: it connects to the socket of the agent that pins
//! under `--pin-path` (see [`crate::events`]), which switches the events it
//! asks for on while it is connected, and prints each one.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    events::{EventRecord, MonitorRequest},
    output::OutputFormat,
};

/// The configuration of `mcs-agent monitor`.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// The agent's monitor socket.
    pub socket: PathBuf,
    /// Only drops, refusals and resets (no translations).
    pub drops_only: bool,
    /// Only events for this import, `namespace/name`.
    pub service: Option<String>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// How each event is printed.
    pub output: OutputFormat,
}

impl MonitorConfig {
    /// Whether `record` passes the filters.
    #[must_use]
    pub fn wants(&self, record: &EventRecord) -> bool {
        (!self.drops_only || record.is_drop())
            && self.service.as_ref().is_none_or(|s| record.service.as_ref() == Some(s))
    }
}

/// One line for people.
#[must_use]
pub fn line(r: &EventRecord) -> String {
    let what = match (&r.reason, &r.backend) {
        (Some(reason), _) => format!("{} {reason}", r.kind),
        (None, Some(backend)) => format!("{} to {backend}", r.kind),
        (None, None) => r.kind.clone(),
    };
    format!(
        "{:<28} {:<4} {} -> {}  service {}  on {} ({})",
        what,
        r.protocol.as_deref().unwrap_or("-"),
        r.source,
        r.destination,
        r.service.as_deref().unwrap_or("-"),
        r.interface,
        r.direction,
    )
}

/// Runs `mcs-agent monitor` until the agent goes away or `--count` events
/// were printed.
///
/// # Errors
/// When the agent's socket cannot be reached, or it says something else
/// than events.
pub fn execute(config: &MonitorConfig) -> Result<()> {
    let socket = &config.socket;
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent's monitor socket {} (is the agent running with this --pin-path?)",
            socket.display()
        )
    })?;
    let request = MonitorRequest { translations: !config.drops_only };
    let mut line_out = serde_json::to_vec(&request)?;
    line_out.push(b'\n');
    stream.write_all(&line_out).context("sending the request to the agent")?;
    eprintln!("listening for datapath events on {} ...", socket.display());
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0_u64;
    if config.count == Some(0) {
        return Ok(());
    }
    for received in BufReader::new(stream).lines() {
        let received = received.context("reading from the agent")?;
        let value: serde_json::Value = serde_json::from_str(&received)
            .with_context(|| format!("the agent sent something that is not JSON: {received}"))?;
        if let Some(lost) = value.get("lost") {
            eprintln!("warning: {lost} event(s) lost (this monitor read too slowly)");
            continue;
        }
        if let Some(error) = value.get("error") {
            bail!("the agent refused the request: {error}");
        }
        let record: EventRecord = serde_json::from_value(value)
            .with_context(|| format!("the agent sent something that is not an event: {received}"))?;
        if !config.wants(&record) {
            continue;
        }
        match config.output {
            OutputFormat::Json => writeln!(stdout, "{}", serde_json::to_string(&record)?)?,
            OutputFormat::Table => writeln!(stdout, "{}", line(&record))?,
        }
        stdout.flush()?;
        printed += 1;
        if config.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
    bail!("the agent closed the connection (it stopped?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, service: Option<&str>) -> EventRecord {
        EventRecord {
            kind: kind.into(),
            reason: (kind != "translated").then(|| "unknown-port".into()),
            protocol: Some("TCP".into()),
            source: "198.18.0.2:40000".into(),
            destination: "198.19.0.10:81".into(),
            backend: (kind == "translated").then(|| "198.18.1.10:8080".into()),
            service: service.map(Into::into),
            interface: "cpod".into(),
            direction: "from-pod".into(),
            time_ns: 1,
        }
    }

    #[test]
    fn filters_by_kind_and_service() {
        let config = MonitorConfig {
            socket: PathBuf::new(),
            drops_only: true,
            service: Some("demo/whoami".into()),
            count: None,
            output: OutputFormat::Json,
        };
        assert!(config.wants(&record("drop", Some("demo/whoami"))));
        assert!(config.wants(&record("reset", Some("demo/whoami"))));
        assert!(!config.wants(&record("translated", Some("demo/whoami"))));
        assert!(!config.wants(&record("drop", Some("demo/other"))));
        assert!(!config.wants(&record("drop", None)));
        let all = MonitorConfig { drops_only: false, service: None, ..config };
        assert!(all.wants(&record("translated", None)));
        let text = line(&record("drop", Some("demo/whoami")));
        assert!(text.contains("drop unknown-port") && text.contains("198.18.0.2:40000 -> 198.19.0.10:81"), "{text}");
    }
}
