//! Socket clients for `mcs-testsrv`. They create their sockets in the calling thread's network
//! namespace, so run them inside [`crate::netns::NetNs::enter`].
//!
//! Protocol (see `src/bin/mcs-testsrv.rs`):
//! * TCP: the server sends `<identity>\n` on accept. If the client then sends `hold\n`, every
//!   further line `L` is answered with `<identity> L\n` until EOF; otherwise the server just
//!   reads until EOF (or 30 s) and closes.
//! * UDP: every datagram is answered with `<identity>\n`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Longest line accepted from the server.
const MAX_LINE: u64 = 4096;

fn with_context(e: &io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: timed out"))
}

/// Reads one `\n`-terminated line (without the terminator, trimmed), giving up at `deadline`.
fn read_line(reader: &mut BufReader<TcpStream>, deadline: Instant, what: &str) -> io::Result<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(what));
    }
    reader.get_ref().set_read_timeout(Some(left))?;
    let mut line = String::new();
    let n = (&mut *reader).take(MAX_LINE).read_line(&mut line).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(what),
        _ => with_context(&e, what),
    })?;
    if n == 0 || !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what}: connection closed before a full line (got {line:?})"),
        ));
    }
    Ok(line.trim().to_owned())
}

/// Connects to `addr`, reads the identity line and closes. Returns the identity (trimmed) and
/// the connection's `peer_addr()` as the client socket sees it. `timeout` bounds connect and read
/// together.
///
/// # Errors
/// Connect failure (refused, timeout, unreachable), read timeout, or early EOF; the message names
/// `addr`.
pub fn tcp_ask(addr: SocketAddrV4, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let what = format!("tcp {addr}");
    let stream =
        TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| with_context(&e, &format!("{what}: connect")))?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream);
    let ident = read_line(&mut reader, deadline, &what)?;
    Ok((ident, peer))
}

/// Sends one datagram to `addr` from a fresh unconnected socket and waits up to `timeout` for
/// one reply. Returns the reply (trimmed) and the address the reply came FROM.
///
/// # Errors
/// Socket errors, or `TimedOut` if no reply arrives (no retransmission is attempted).
pub fn udp_ask(addr: SocketAddrV4, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let what = format!("udp {addr}");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| with_context(&e, &what))?;
    sock.send_to(b"ask\n", addr).map_err(|e| with_context(&e, &format!("{what}: send")))?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(&what),
        _ => with_context(&e, &what),
    })?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from))
}

/// A long-lived TCP connection to `mcs-testsrv` in "hold" mode.
///
/// The socket lives in the namespace of the thread that called [`HeldStream::open`], but the
/// value itself may be moved out of [`crate::netns::NetNs::enter`] and used from any thread.
#[derive(Debug)]
pub struct HeldStream {
    reader: BufReader<TcpStream>,
    identity: String,
    peer: SocketAddr,
    local: SocketAddr,
    seq: u64,
    timeout: Duration,
}

impl HeldStream {
    /// Connects, reads the identity line and switches the server to hold (echo) mode.
    /// `timeout` bounds the connect+greeting, and later each [`HeldStream::ping`].
    ///
    /// # Errors
    /// As for [`tcp_ask`], plus write errors.
    pub fn open(addr: SocketAddrV4, timeout: Duration) -> io::Result<HeldStream> {
        let deadline = Instant::now() + timeout;
        let what = format!("tcp {addr} (held)");
        let stream = TcpStream::connect_timeout(&addr.into(), timeout)
            .map_err(|e| with_context(&e, &format!("{what}: connect")))?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let mut reader = BufReader::new(stream);
        let identity = read_line(&mut reader, deadline, &what)?;
        reader.get_mut().write_all(b"hold\n").map_err(|e| with_context(&e, &what))?;
        Ok(HeldStream { reader, identity, peer, local, seq: 0, timeout })
    }

    /// Identity announced when the connection was opened.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Peer address as seen by the client socket (e.g. the `ClusterSetIP`).
    #[must_use]
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The client socket's local address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `ping <n>` and waits for the echo `<identity> ping <n>`. Returns the identity of
    /// the answering server (which must be the same as at open for a healthy connection).
    ///
    /// # Errors
    /// Write/read errors, timeout, EOF/reset, or a reply that does not echo this ping.
    pub fn ping(&mut self) -> io::Result<String> {
        self.seq += 1;
        let msg = format!("ping {}", self.seq);
        let what = format!("tcp {} (held) {msg}", self.peer);
        let deadline = Instant::now() + self.timeout;
        self.reader.get_mut().write_all(format!("{msg}\n").as_bytes()).map_err(|e| with_context(&e, &what))?;
        let line = read_line(&mut self.reader, deadline, &what)?;
        match line.strip_suffix(&msg) {
            Some(ident) if ident.ends_with(' ') => Ok(ident.trim_end().to_owned()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what}: unexpected reply {line:?}"))),
        }
    }

    /// Closes the write side and waits (bounded by the timeout) for the server to close.
    ///
    /// # Errors
    /// Shutdown errors.
    pub fn close(mut self) -> io::Result<()> {
        self.reader.get_ref().shutdown(std::net::Shutdown::Write)?;
        let deadline = Instant::now() + self.timeout;
        // Drain until EOF; bounded by count and the deadline.
        for _ in 0..10_000 {
            match read_line(&mut self.reader, deadline, "close") {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}
