//! The transports every scenario runs over, and connected socket pairs for them.
//!
//! Every contender gets its sockets from here, so all of them run with the same socket options
//! (TCP_NODELAY on both ends of a TCP connection, which peerwire would set itself and fizyr-rpc
//! would not): the comparison is of the code above the socket, not of Nagle's algorithm.
//!
//! Adding a transport: a variant in [`Transport`], [`StdPair`] and [`TokioPair`], and an arm in
//! each contender's `connect`. TLS is the exception: only peerwire speaks it (the others would
//! need a TLS layer written for the suite), and it makes its connections itself, through
//! `TlsListener` and `TlsPeer` over loopback TCP with TCP_NODELAY on both ends like the rest;
//! its rows compare peerwire over TLS with peerwire over plain TCP.

use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
	Tcp,
	UnixStream,
	#[cfg(feature = "unix-seqpacket")]
	UnixSeqpacket,
	#[cfg(feature = "tls")]
	Tls,
}

impl Transport {
	pub const ALL: &[Transport] = &[
		Transport::Tcp,
		Transport::UnixStream,
		#[cfg(feature = "unix-seqpacket")]
		Transport::UnixSeqpacket,
		#[cfg(feature = "tls")]
		Transport::Tls,
	];

	pub fn name(self) -> &'static str {
		match self {
			Transport::Tcp => "tcp",
			Transport::UnixStream => "unix-stream",
			#[cfg(feature = "unix-seqpacket")]
			Transport::UnixSeqpacket => "unix-seqpacket",
			#[cfg(feature = "tls")]
			Transport::Tls => "tls",
		}
	}

	/// Whether it carries one message per datagram (seqpacket) rather than a byte stream.
	pub fn is_datagram(self) -> bool {
		match self {
			#[cfg(feature = "unix-seqpacket")]
			Transport::UnixSeqpacket => true,
			_ => false,
		}
	}

	/// Whether every contender can speak it: a bare socket, no security layer.
	pub fn is_plain(self) -> bool {
		match self {
			#[cfg(feature = "tls")]
			Transport::Tls => false,
			_ => true,
		}
	}

	pub fn from_name(name: &str) -> Option<Self> {
		Self::ALL.iter().copied().find(|transport| transport.name() == name)
	}

	/// The largest body one message can carry.
	pub fn max_body(self) -> usize {
		match self {
			Transport::Tcp | Transport::UnixStream => usize::MAX,
			#[cfg(feature = "tls")]
			Transport::Tls => usize::MAX,
			// Linux sends a datagram of at most about 4 MiB (header included); larger payloads
			// go through a descriptor instead.
			#[cfg(feature = "unix-seqpacket")]
			Transport::UnixSeqpacket => (4 << 20) - 12,
		}
	}

	/// A connected pair of blocking sockets.
	pub fn std_pair(self) -> io::Result<StdPair> {
		match self {
			Transport::Tcp => {
				let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
				let client = std::net::TcpStream::connect(listener.local_addr()?)?;
				let (server, _) = listener.accept()?;
				client.set_nodelay(true)?;
				server.set_nodelay(true)?;
				Ok(StdPair::Tcp(client, server))
			},
			Transport::UnixStream => {
				let (client, server) = std::os::unix::net::UnixStream::pair()?;
				Ok(StdPair::Unix(client, server))
			},
			#[cfg(feature = "unix-seqpacket")]
			Transport::UnixSeqpacket => {
				use rustix::net::{AddressFamily, SocketFlags, SocketType};
				let (client, server) =
					rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
				Ok(StdPair::Seqpacket(client, server))
			},
			#[cfg(feature = "tls")]
			Transport::Tls => {
				Err(io::Error::new(io::ErrorKind::Unsupported, "TLS connections are made by the peerwire contender"))
			},
		}
	}

	/// A connected pair of tokio sockets. Call inside a runtime.
	pub fn tokio_pair(self) -> io::Result<TokioPair> {
		Ok(match self.std_pair()? {
			StdPair::Tcp(client, server) => TokioPair::Tcp(tokio_tcp(client)?, tokio_tcp(server)?),
			StdPair::Unix(client, server) => TokioPair::Unix(tokio_unix(client)?, tokio_unix(server)?),
			#[cfg(feature = "unix-seqpacket")]
			StdPair::Seqpacket(client, server) => TokioPair::Seqpacket(tokio_seqpacket(client)?, tokio_seqpacket(server)?),
		})
	}
}

/// Two connected blocking sockets: (client end, server end).
pub enum StdPair {
	Tcp(std::net::TcpStream, std::net::TcpStream),
	Unix(std::os::unix::net::UnixStream, std::os::unix::net::UnixStream),
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket(std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

/// Two connected tokio sockets: (client end, server end).
pub enum TokioPair {
	Tcp(tokio::net::TcpStream, tokio::net::TcpStream),
	Unix(tokio::net::UnixStream, tokio::net::UnixStream),
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket(tokio_seqpacket::UnixSeqpacket, tokio_seqpacket::UnixSeqpacket),
}

fn tokio_tcp(socket: std::net::TcpStream) -> io::Result<tokio::net::TcpStream> {
	socket.set_nonblocking(true)?;
	tokio::net::TcpStream::from_std(socket)
}

fn tokio_unix(socket: std::os::unix::net::UnixStream) -> io::Result<tokio::net::UnixStream> {
	socket.set_nonblocking(true)?;
	tokio::net::UnixStream::from_std(socket)
}

#[cfg(feature = "unix-seqpacket")]
fn tokio_seqpacket(socket: std::os::fd::OwnedFd) -> io::Result<tokio_seqpacket::UnixSeqpacket> {
	rustix::io::ioctl_fionbio(&socket, true)?;
	tokio_seqpacket::UnixSeqpacket::try_from(socket)
}
