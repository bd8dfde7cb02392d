//! Socket clients for `mcs-testsrv`. They create their sockets in the calling thread's network
//! namespace, so run them inside [`crate::netns::NetNs::enter`].
//!
//! Protocol (see `src/bin/mcs-testsrv.rs`):
//! * TCP: the server sends `<identity>\n` on accept. If the client then sends `hold\n`, every
//!   further line `L` is answered with `<identity> L\n` until EOF; otherwise the server just
//!   reads until EOF (or 30 s) and closes.
//!   If the client's first line is `info`, the server answers `<identity> port=<port>
//!   peer=<ip:port>` (see [`ServerInfo`]).
//! * UDP: every datagram is answered with `<identity>\n`; the datagram `info` with the same
//!   `info` line as TCP.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits sa_family_t"),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// Connects to `addr` from the local address `src` (any port), or from whatever address the
/// kernel picks when `src` is `None`, giving up after `timeout`. The returned stream is blocking.
///
/// # Errors
/// `src` not assigned in this namespace, connect refused or timed out, and the like; the message
/// names both addresses.
///
/// # Panics
/// Never in practice: the sizes of `sockaddr_in` and `c_int` fit `socklen_t`.
pub fn connect_from(src: Option<Ipv4Addr>, addr: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let Some(src) = src else {
        return TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| with_context(&e, &format!("{addr}")));
    };
    connect_bound(SocketAddrV4::new(src, 0), addr, timeout)
}

/// Connects to `addr` from the local address and port `local` (port 0: any), giving up after
/// `timeout`. A fixed port outside the ephemeral range keeps a connection out of the way of
/// the ports the kernel hands out to other connections. The returned stream is blocking.
///
/// # Errors
/// As [`connect_from`]; also when `local`'s port is taken.
///
/// # Panics
/// Never in practice: the sizes of `sockaddr_in` and `c_int` fit `socklen_t`.
pub fn connect_bound(local: SocketAddrV4, addr: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let what = format!("{local} -> {addr}");
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).expect("sockaddr_in size");
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(with_context(&io::Error::last_os_error(), &format!("{what}: socket")));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = sockaddr_in(local);
    // SAFETY: valid sockaddr_in of the given length.
    let rc = unsafe { libc::bind(owned.as_raw_fd(), (&raw const local).cast(), len) };
    if rc != 0 {
        return Err(with_context(&io::Error::last_os_error(), &format!("{what}: bind")));
    }
    let remote = sockaddr_in(addr);
    // SAFETY: valid sockaddr_in of the given length.
    let rc = unsafe { libc::connect(owned.as_raw_fd(), (&raw const remote).cast(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(with_context(&e, &format!("{what}: connect")));
        }
        let deadline = Instant::now() + timeout;
        // Bounded: each round either returns or waits in poll until the deadline.
        let mut ready = false;
        for _ in 0..1000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            let mut pfd = libc::pollfd { fd: owned.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if n > 0 {
                ready = true;
                break;
            }
            if n == 0 || left.is_zero() {
                break;
            }
        }
        if !ready {
            return Err(timed_out(&format!("{what}: connect")));
        }
        let mut err: libc::c_int = 0;
        let mut err_len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("int size");
        // SAFETY: valid out-pointers of the stated size.
        let rc = unsafe {
            libc::getsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &raw mut err_len,
            )
        };
        if rc != 0 {
            return Err(with_context(&io::Error::last_os_error(), &format!("{what}: SO_ERROR")));
        }
        if err != 0 {
            return Err(with_context(&io::Error::from_raw_os_error(err), &format!("{what}: connect")));
        }
    }
    let stream = TcpStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// What `mcs-testsrv` says about one connection or datagram (its `info` answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's identity, `<cluster>/<pod>`.
    pub identity: String,
    /// The port the server received on (the backend's target port).
    pub port: u16,
    /// The client address as the server saw it (after any NAT).
    pub peer: SocketAddr,
    /// The server address as the client saw it (the `ClusterSetIP` when translated).
    pub server: SocketAddr,
}

impl ServerInfo {
    /// Parses `<identity> port=<port> peer=<ip:port>`.
    fn parse(line: &str, server: SocketAddr) -> io::Result<ServerInfo> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("unexpected info answer {line:?}"));
        let mut words = line.split(' ');
        let identity = words.next().filter(|w| !w.is_empty()).ok_or_else(bad)?.to_owned();
        let port = words.next().and_then(|w| w.strip_prefix("port=")).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let peer = words.next().and_then(|w| w.strip_prefix("peer=")).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(ServerInfo { identity, port, peer, server })
    }
}

/// Connects to `addr` (from `src`, see [`connect_from`]), asks `info` and closes. `timeout`
/// bounds the whole exchange.
///
/// # Errors
/// As [`connect_from`], plus read timeouts, early EOF and malformed answers; messages name `addr`.
pub fn tcp_info_from(src: Option<Ipv4Addr>, addr: SocketAddrV4, timeout: Duration) -> io::Result<ServerInfo> {
    let deadline = Instant::now() + timeout;
    let what = format!("tcp {addr} info");
    let stream = connect_from(src, addr, timeout)?;
    let server = stream.peer_addr()?;
    let mut reader = BufReader::new(stream);
    let greeting = read_line(&mut reader, deadline, &what)?;
    reader.get_mut().write_all(b"info\n").map_err(|e| with_context(&e, &what))?;
    let info = ServerInfo::parse(&read_line(&mut reader, deadline, &what)?, server)?;
    if info.identity != greeting {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: greeting {greeting:?} but info from {:?}", info.identity),
        ));
    }
    Ok(info)
}

/// [`tcp_info_from`] from the address the kernel picks.
///
/// # Errors
/// See [`tcp_info_from`].
pub fn tcp_info(addr: SocketAddrV4, timeout: Duration) -> io::Result<ServerInfo> {
    tcp_info_from(None, addr, timeout)
}

/// Sends the datagram `info` to `addr` from a fresh unconnected socket and waits up to `timeout`
/// for the answer; `server` in the result is where the answer came from.
///
/// # Errors
/// Socket errors, `TimedOut` without an answer, malformed answers.
pub fn udp_info(addr: SocketAddrV4, timeout: Duration) -> io::Result<ServerInfo> {
    let (answer, from) = udp_exchange(addr, b"info\n", timeout, &format!("udp {addr} info"))?;
    ServerInfo::parse(&answer, from)
}

/// Sends one datagram on a *connected* UDP socket and waits up to `timeout` for the answer.
/// Unlike [`udp_ask`], an ICMP port unreachable coming back surfaces as an error of kind
/// `ConnectionRefused` (Linux reports ICMP errors on connected sockets).
///
/// # Errors
/// Socket errors, `ConnectionRefused` on ICMP unreachable, `TimedOut` without any answer.
pub fn udp_ask_connected(addr: SocketAddrV4, timeout: Duration) -> io::Result<String> {
    let what = format!("udp {addr} (connected)");
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| with_context(&e, &what))?;
    sock.connect(addr).map_err(|e| with_context(&e, &format!("{what}: connect")))?;
    sock.send(b"ask\n").map_err(|e| with_context(&e, &format!("{what}: send")))?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(&what),
        _ => with_context(&e, &what),
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
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
    udp_exchange(addr, b"ask\n", timeout, &format!("udp {addr}"))
}

/// Sends `request` to `addr` from a fresh unconnected socket and waits up to `timeout` for one
/// reply: the reply (trimmed) and the address it came from. `what` names the exchange in errors.
fn udp_exchange(addr: SocketAddrV4, request: &[u8], timeout: Duration, what: &str) -> io::Result<(String, SocketAddr)> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| with_context(&e, what))?;
    sock.send_to(request, addr).map_err(|e| with_context(&e, &format!("{what}: send")))?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(what),
        _ => with_context(&e, what),
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
        HeldStream::open_from(None, addr, timeout)
    }

    /// As [`HeldStream::open`], from the local address `src` (see [`connect_from`]).
    ///
    /// # Errors
    /// As [`HeldStream::open`].
    pub fn open_from(src: Option<Ipv4Addr>, addr: SocketAddrV4, timeout: Duration) -> io::Result<HeldStream> {
        let deadline = Instant::now() + timeout;
        let what = format!("tcp {addr} (held)");
        let stream = connect_from(src, addr, timeout).map_err(|e| with_context(&e, &format!("{what}: connect")))?;
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

/// The cluster of a server identity `<cluster>/pod<j>`.
#[must_use]
pub fn cluster_of(identity: &str) -> &str {
    identity.split('/').next().unwrap_or(identity)
}

/// Pings every stream; each must answer with the identity it had at open.
///
/// # Panics
/// When a stream fails or another server answers; the message names `when` and the stream.
pub fn ping_all(streams: &mut [HeldStream], when: &str) {
    for (i, s) in streams.iter_mut().enumerate() {
        let who = s.ping().unwrap_or_else(|e| panic!("{when}: stream {i} ({}): {e}", s.identity()));
        assert_eq!(who, s.identity(), "{when}: stream {i} kept its backend");
    }
}
