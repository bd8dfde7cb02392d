//! TCP streams whose both ends the test holds: the client end is connected from the client pod,
//! the server end is accepted from a listener the test itself opened in a backend pod. So a test
//! can make either side speak first, which matters: a flow whose reply translation was lost
//! still looks healthy as long as the client always speaks first and the datapath re-creates
//! it, but not when the server speaks first.
//!
//! Sockets live in the namespace of the thread that created them (inside
//! [`crate::netns::NetNs::enter`]) and may be used from any thread afterwards.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::client::connect_from;
use crate::netns::NetNs;

/// Longest line read.
const MAX_LINE: u64 = 256;

/// How long a connect, an accept or one side of an exchange may take.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(2);

/// A listener the test opened in a backend pod, named by that pod's identity.
#[derive(Debug)]
pub struct PodListener {
    listener: TcpListener,
    identity: String,
}

impl PodListener {
    /// Listens on `0.0.0.0:<port>` in `pod`; `identity` names the pod in messages and in
    /// [`Pair::backend`].
    ///
    /// # Panics
    /// When the port cannot be bound.
    #[must_use]
    pub fn bind(pod: &NetNs, identity: &str, port: u16) -> PodListener {
        let listener = pod
            .enter(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("listen on {port} in {}: {e}", pod.name()));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("listener in {}: {e}", pod.name()));
        PodListener { listener, identity: identity.to_owned() }
    }

    /// The pod's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }
}

/// One held TCP connection, both ends.
#[derive(Debug)]
pub struct Pair {
    client: BufReader<TcpStream>,
    server: BufReader<TcpStream>,
    backend: String,
    seen_from: SocketAddr,
    seq: u64,
    timeout: Duration,
}

fn read_line(reader: &mut BufReader<TcpStream>, timeout: Duration, what: &str) -> io::Result<String> {
    reader.get_ref().set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut line = String::new();
    let n = (&mut *reader).take(MAX_LINE).read_line(&mut line).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("{what}: nothing within {timeout:?}"))
        }
        kind => io::Error::new(kind, format!("{what}: {e}")),
    })?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{what}: closed")));
    }
    Ok(line.trim_end().to_owned())
}

impl Pair {
    /// Connects from `client` to `target` and finds the server end among `listeners` (whichever
    /// accepts it; a token sent by the client tells it from anything else pending there).
    /// [`PAIR_TIMEOUT`] bounds the connect, the accept and later each side of an exchange.
    ///
    /// # Errors
    /// When the connect fails or no listener accepts the connection in time.
    pub fn open(client: &NetNs, target: SocketAddrV4, listeners: &[PodListener]) -> io::Result<Pair> {
        let timeout = PAIR_TIMEOUT;
        let stream = client.enter(|| connect_from(None, target, timeout))?;
        stream.set_nodelay(true)?;
        let token = format!("open {}", stream.local_addr()?);
        let mut client_end = BufReader::new(stream);
        client_end.get_mut().write_all(format!("{token}\n").as_bytes())?;
        let deadline = Instant::now() + timeout;
        // Bounded: every round sleeps 2 ms, and the deadline ends it.
        for _ in 0..100_000 {
            for listener in listeners {
                match listener.listener.accept() {
                    Ok((stream, from)) => {
                        stream.set_nonblocking(false)?;
                        stream.set_nodelay(true)?;
                        let mut server = BufReader::new(stream);
                        if read_line(&mut server, timeout, "token").is_ok_and(|t| t == token) {
                            return Ok(Pair {
                                client: client_end,
                                server,
                                backend: listener.identity.clone(),
                                seen_from: from,
                                seq: 0,
                                timeout,
                            });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("{token} to {target}: no listener accepted it in time")))
    }

    /// How long each side of an exchange may take from now on (default [`PAIR_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The identity of the listener that accepted it.
    #[must_use]
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The client address as the server end saw it.
    #[must_use]
    pub fn seen_from(&self) -> SocketAddr {
        self.seen_from
    }

    /// The client end's local address.
    ///
    /// # Panics
    /// When the socket cannot say.
    #[must_use]
    pub fn client_addr(&self) -> SocketAddr {
        self.client.get_ref().local_addr().expect("local address of the client end")
    }

    /// The server speaks first: it sends a line, the client must read it.
    ///
    /// # Errors
    /// When the line does not arrive (timeout, reset, EOF), or another one does.
    pub fn server_first(&mut self) -> io::Result<()> {
        self.seq += 1;
        let line = format!("from server {}", self.seq);
        self.server.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let got = read_line(&mut self.client, self.timeout, &format!("client end, waiting for {line:?}"))?;
        if got == line {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("{got:?} for {line:?}")))
        }
    }

    /// The client speaks first: it sends a line, the server must read it. When the server gets
    /// nothing, the client end is checked for a reset: the error's kind is then
    /// `ConnectionReset` (an RST reached the client), else `TimedOut`.
    ///
    /// # Errors
    /// As said.
    pub fn client_first(&mut self) -> io::Result<()> {
        self.seq += 1;
        let line = format!("from client {}", self.seq);
        if let Err(e) = self.client.get_mut().write_all(format!("{line}\n").as_bytes()) {
            return Err(io::Error::new(e.kind(), format!("client end, sending {line:?}: {e}")));
        }
        match read_line(&mut self.server, self.timeout, &format!("server end, waiting for {line:?}")) {
            Ok(got) if got == line => Ok(()),
            Ok(got) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{got:?} for {line:?}"))),
            Err(e) => {
                // What became of the client end: reset, closed, or silent.
                let verdict = read_line(&mut self.client, Duration::from_millis(300), "client end");
                match verdict {
                    Err(r) if r.kind() == io::ErrorKind::ConnectionReset => {
                        Err(io::Error::new(io::ErrorKind::ConnectionReset, format!("{e}; the client end was reset")))
                    }
                    other => Err(io::Error::new(e.kind(), format!("{e}; the client end: {other:?}"))),
                }
            }
        }
    }

    /// [`Pair::server_first`], then [`Pair::client_first`].
    ///
    /// # Errors
    /// The first that fails, with `when` and the backend in the message.
    pub fn exchange(&mut self, when: &str) -> io::Result<()> {
        let backend = self.backend.clone();
        let context = |e: io::Error, side: &str| io::Error::new(e.kind(), format!("{when}: {side} to {backend}: {e}"));
        self.server_first().map_err(|e| context(e, "server first"))?;
        self.client_first().map_err(|e| context(e, "client first"))
    }
}

/// Runs [`Pair::exchange`] on every pair.
///
/// # Panics
/// When one fails; the message names `when`, the pair and what happened.
pub fn exchange_all(pairs: &mut [Pair], when: &str) {
    for (i, pair) in pairs.iter_mut().enumerate() {
        let client = pair.client_addr();
        pair.exchange(when).unwrap_or_else(|e| panic!("stream {i} (client {client}): {e}"));
    }
}
