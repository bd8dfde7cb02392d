//! Ordinary programs as the tests' servers and clients, the way a user would try the dataplane:
//! `nginx` (Debian's nginx-light) serving a small page, `ApacheBench` (`ab`) and `iperf3`; and
//! kube-proxy's plain iptables DNAT to compare with.
//!
//! Servers are spawned in a pod namespace and registered with its guard, which kills them when
//! the namespace goes. Clients run under `timeout`, so a client that hangs is ended and its
//! partial output reported. Nothing here reaches outside the namespaces it is given.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::wait_until;

/// The page `nginx` serves at `/`.
pub const PAGE: &str = "mcs-tests: hello from nginx\n";

/// How long a server may take to start listening.
const SERVER_READY: Duration = Duration::from_secs(10);

/// `nginx` (master process off, one process, access log off) in a pod, serving [`PAGE`] on
/// `0.0.0.0:<port>`. Its configuration, page and logs live in a directory this guard removes on
/// drop; the process belongs to the pod's namespace guard.
#[derive(Debug)]
pub struct Nginx {
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Starts `nginx` in `pod` on `port` and waits (at most 10 s) until it serves the page.
    ///
    /// # Panics
    /// When the files cannot be written, `nginx` cannot start or it does not serve in time (the
    /// message has its error log).
    #[must_use]
    pub fn start(pod: &NetNs, port: u16) -> Nginx {
        let dir = std::env::temp_dir().join(format!("{}-nginx-{port}", pod.name()));
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap_or_else(|e| panic!("create {}: {e}", www.display()));
        std::fs::write(www.join("index.html"), PAGE).unwrap_or_else(|e| panic!("write the page: {e}"));
        let d = dir.display();
        let mut conf = String::new();
        // One process that stays in the foreground (and so under the namespace guard), running as
        // the caller, every path inside `dir`.
        let _ = writeln!(conf, "daemon off;\nmaster_process off;\nworker_processes 1;");
        let _ = writeln!(conf, "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;");
        let _ = writeln!(conf, "events {{ worker_connections 4096; }}");
        let _ = writeln!(conf, "http {{\n  access_log off;");
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let _ = writeln!(conf, "  {temp}_temp_path {d}/{temp};");
        }
        let _ = writeln!(conf, "  server {{ listen {port} backlog=4096; root {d}/www; }}\n}}");
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let nginx = Nginx { dir, port };

        let mut cmd = pod.nsenter_command("nginx");
        cmd.arg("-p").arg(&nginx.dir).arg("-e").arg(nginx.dir.join("error.log")).arg("-c").arg(&conf_path);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // Registered with the pod's namespace guard, which kills and reaps it.
        let mut child = pod.spawn_cmd(&mut cmd);
        let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until(SERVER_READY, Duration::from_millis(20), &format!("nginx in {} on {port}", pod.name()), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nginx in {} exited: {status}; error log: {}", pod.name(), nginx.error_log());
            }
            pod.enter(|| http_get(local, Duration::from_millis(500))).map_err(|e| e.to_string())
        });
        nginx
    }

    /// The port it serves on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its error log so far (for messages).
    #[must_use]
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.0 `GET /` to `addr` from the calling thread's namespace; the body must be
/// [`PAGE`].
///
/// # Errors
/// Connect, read or write failures, a timeout, or another answer.
pub fn http_get(addr: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    get_page(TcpStream::connect_timeout(&addr.into(), timeout)?, addr, timeout)
}

/// As [`http_get`], from the local address and port `local` (see
/// [`crate::client::connect_bound`]).
///
/// # Errors
/// As [`http_get`].
pub fn http_get_from(local: SocketAddrV4, addr: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    get_page(crate::client::connect_bound(local, addr, timeout)?, addr, timeout)
}

fn get_page(mut stream: TcpStream, addr: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 200") && answer.ends_with(PAGE) {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("GET / from {addr}: {answer:?}")))
    }
}

/// `ApacheBench`: `ab -r -c <concurrency> -n <requests> -s <request timeout> http://<target>/`,
/// from a namespace, under `timeout`. Without keep-alive (ab's default), so every request is a
/// new TCP connection, which the server closes.
#[derive(Debug, Clone)]
pub struct Ab {
    target: SocketAddrV4,
    requests: u32,
    concurrency: u32,
    request_timeout: Duration,
    limit: Duration,
}

impl Ab {
    /// 1000 serial requests to `http://<target>/`, each given 5 s, the whole run 2 minutes.
    #[must_use]
    pub fn new(target: SocketAddrV4) -> Ab {
        Ab {
            target,
            requests: 1000,
            concurrency: 1,
            request_timeout: Duration::from_secs(5),
            limit: Duration::from_mins(2),
        }
    }

    /// How many requests (`-n`).
    #[must_use]
    pub fn requests(mut self, n: u32) -> Ab {
        self.requests = n;
        self
    }

    /// How many at a time (`-c`).
    #[must_use]
    pub fn concurrency(mut self, c: u32) -> Ab {
        self.concurrency = c;
        self
    }

    /// How long ab waits for one request before it gives up on the run (`-s`, whole seconds).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Ab {
        self.request_timeout = timeout;
        self
    }

    /// The bound on the whole run; past it, ab is killed.
    #[must_use]
    pub fn limit(mut self, limit: Duration) -> Ab {
        self.limit = limit;
        self
    }

    /// The target.
    #[must_use]
    pub fn target(&self) -> SocketAddrV4 {
        self.target
    }

    /// Runs ab in `ns` and reads its report. A run that failed or was cut short still gives a
    /// report, with what ab said in [`AbReport::error`].
    ///
    /// # Panics
    /// When ab cannot be started at all.
    #[must_use]
    pub fn run(&self, ns: &NetNs) -> AbReport {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "5", &self.limit.as_secs().max(1).to_string(), "ip", "netns", "exec", ns.name()])
            .args(["ab", "-q", "-r", "-c", &self.concurrency.to_string(), "-n", &self.requests.to_string()])
            .args(["-s", &self.request_timeout.as_secs().max(1).to_string()])
            .arg(format!("http://{}/", self.target))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ab in {}: {e}", ns.name()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut report = AbReport::parse(&stdout, self.requests);
        report.wall = started.elapsed();
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim();
            report.error = Some(if out.status.code() == Some(124) {
                format!("ab did not finish within {:?} and was killed ({said})", self.limit)
            } else {
                format!("ab failed ({}): {said}", out.status)
            });
        }
        report
    }
}

/// What one ab run reported.
#[derive(Debug, Clone, Default)]
pub struct AbReport {
    /// Requests asked for.
    pub requested: u32,
    /// Requests that completed.
    pub complete: u32,
    /// ab's failed requests (connect, receive, length and exceptions).
    pub failed: u32,
    /// Answers that were not 2xx.
    pub non_2xx: u32,
    /// Requests per second (mean over the run).
    pub rate: f64,
    /// Milliseconds within which half the requests were served.
    pub p50_ms: u32,
    /// ... 99% of them.
    pub p99_ms: u32,
    /// The longest request, milliseconds.
    pub longest_ms: u32,
    /// Wall time of the run, ab's start included.
    pub wall: Duration,
    /// Why ab did not finish cleanly, if it did not.
    pub error: Option<String>,
}

impl AbReport {
    /// Parses ab's standard output (also a partial one).
    #[must_use]
    pub fn parse(stdout: &str, requested: u32) -> AbReport {
        let mut r = AbReport { requested, ..AbReport::default() };
        let number =
            |line: &str, key: &str| -> Option<f64> { line.strip_prefix(key)?.split_whitespace().next()?.parse().ok() };
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "ab prints whole counts")]
        let whole = |v: f64| v as u32;
        for line in stdout.lines() {
            let trimmed = line.trim();
            if let Some(v) = number(trimmed, "Complete requests:") {
                r.complete = whole(v);
            } else if let Some(v) = number(trimmed, "Failed requests:") {
                r.failed = whole(v);
            } else if let Some(v) = number(trimmed, "Non-2xx responses:") {
                r.non_2xx = whole(v);
            } else if let Some(v) = number(trimmed, "Requests per second:") {
                r.rate = v;
            } else if let Some(v) = trimmed.find("Total of").and_then(|at| number(&trimmed[at..], "Total of")) {
                // "Total of N requests completed", printed when a run is cut short (after
                // "Benchmarking ... (be patient)..." on the same line).
                r.complete = whole(v);
            } else if let Some((pct, ms)) = trimmed.split_once('%') {
                let ms = ms.split_whitespace().next().and_then(|m| m.parse::<u32>().ok());
                match (pct.trim().parse::<u32>(), ms) {
                    (Ok(50), Some(ms)) => r.p50_ms = ms,
                    (Ok(99), Some(ms)) => r.p99_ms = ms,
                    (Ok(100), Some(ms)) => r.longest_ms = ms,
                    _ => {}
                }
            }
        }
        r
    }

    /// `Ok` when every request completed, none failed, every answer was 2xx and ab finished.
    ///
    /// # Errors
    /// A sentence saying what went wrong.
    pub fn clean(&self) -> Result<(), String> {
        let mut wrong = Vec::new();
        if let Some(e) = &self.error {
            wrong.push(e.clone());
        }
        if self.complete != self.requested {
            wrong.push(format!("{} of {} requests completed", self.complete, self.requested));
        }
        if self.failed != 0 {
            wrong.push(format!("{} failed requests", self.failed));
        }
        if self.non_2xx != 0 {
            wrong.push(format!("{} non-2xx answers", self.non_2xx));
        }
        if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
    }

    /// One line for logs and messages.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{:>8.0} req/s, {}/{} complete, {} failed, p50 {} ms, p99 {} ms, longest {} ms, {:.1} s{}",
            self.rate,
            self.complete,
            self.requested,
            self.failed,
            self.p50_ms,
            self.p99_ms,
            self.longest_ms,
            self.wall.as_secs_f64(),
            self.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
        )
    }
}

/// `iperf3 -s` in a pod on `port`, registered with the pod's namespace guard. Returns once it
/// listens (at most 10 s).
///
/// # Panics
/// When it cannot start or does not listen in time.
pub fn iperf3_server(pod: &NetNs, port: u16) {
    let mut cmd = pod.nsenter_command("iperf3");
    cmd.args(["-s", "-p", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Registered with the pod's namespace guard, which kills and reaps it.
    let mut child = pod.spawn_cmd(&mut cmd);
    let filter = format!("sport = :{port}");
    wait_until(SERVER_READY, Duration::from_millis(20), &format!("iperf3 -s in {} on {port}", pod.name()), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("iperf3 -s in {} exited: {status}", pod.name());
        }
        let out = pod.try_exec(&["ss", "-Hltn", &filter]);
        if String::from_utf8_lossy(&out.stdout).trim().is_empty() { Err("not listening".into()) } else { Ok(()) }
    });
}

/// An `iperf3` client: one TCP stream from a namespace to `target` (an upload: the client sends).
#[derive(Debug, Clone)]
pub struct Iperf3 {
    target: SocketAddrV4,
    seconds: u32,
}

impl Iperf3 {
    /// 3 seconds to `target`.
    #[must_use]
    pub fn new(target: SocketAddrV4) -> Iperf3 {
        Iperf3 { target, seconds: 3 }
    }

    /// How long to send (`-t`).
    #[must_use]
    pub fn seconds(mut self, seconds: u32) -> Iperf3 {
        self.seconds = seconds;
        self
    }

    /// Runs it in `ns` (bounded: the test time plus 20 s). A failed run reports 0 Gbit/s and
    /// what iperf3 said.
    ///
    /// # Panics
    /// When iperf3 cannot be started at all.
    #[must_use]
    pub fn run(&self, ns: &NetNs) -> Iperf3Report {
        let out = Command::new("timeout")
            .args(["-k", "5", &(self.seconds + 20).to_string(), "ip", "netns", "exec", ns.name()])
            .args(["iperf3", "-J", "--connect-timeout", "3000", "-c", &self.target.ip().to_string()])
            .args(["-p", &self.target.port().to_string(), "-t", &self.seconds.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run iperf3 in {}: {e}", ns.name()));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let received = json.pointer("/end/sum_received/bits_per_second").and_then(serde_json::Value::as_f64);
        let error = match (received, json.get("error")) {
            (Some(_), None) => None,
            (_, Some(e)) => Some(e.to_string()),
            (None, None) => {
                Some(format!("iperf3 ({}) gave no result: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        Iperf3Report {
            gbps: received.unwrap_or(0.0) / 1e9,
            retransmits: json.pointer("/end/sum_sent/retransmits").and_then(serde_json::Value::as_u64),
            error,
        }
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Default)]
pub struct Iperf3Report {
    /// Received by the server, Gbit/s (0 when the run failed).
    pub gbps: f64,
    /// Retransmitted segments of the sender, when iperf3 reports them.
    pub retransmits: Option<u64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl Iperf3Report {
    /// One line for logs and messages.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{:.2} Gbit/s, {} retransmits{}",
            self.gbps,
            self.retransmits.map_or_else(|| "?".to_owned(), |r| r.to_string()),
            self.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
        )
    }
}

/// kube-proxy's plain iptables DNAT for one TCP service port, in `node`'s `nat` table:
/// `PREROUTING -d <vip> -p tcp --dport <port> -j DNAT --to-destination <backend>`. The
/// rules live and die with the namespace.
///
/// # Panics
/// When iptables refuses the rule.
pub fn iptables_dnat(node: &NetNs, vip: SocketAddrV4, backend: SocketAddrV4) {
    let (ip, port, to) = (format!("{}/32", vip.ip()), vip.port().to_string(), backend.to_string());
    node.exec(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        &ip,
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ]);
}
