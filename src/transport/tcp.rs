//! TCP: the stream transport over `tokio::net::TcpStream`.

use std::net::SocketAddr;
use std::task::{Context, Poll, ready};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::{ConnectionInfo, RemoteAddress, StreamTransport};
use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::listener::{AcceptError, Acceptor, Listener};
use crate::peer::Peer;

/// The transport of a TCP connection.
pub type TcpTransport = StreamTransport<OwnedReadHalf, OwnedWriteHalf>;
/// A peer on a TCP connection.
pub type TcpPeer = Peer<TcpTransport>;
/// A listener for TCP connections.
pub type TcpListener = Listener<tokio::net::TcpListener>;

impl TcpTransport {
	/// Wrap a connected TCP stream. Turns Nagle's algorithm off: the transport batches writes
	/// itself, and small requests must not wait for an acknowledgement.
	pub fn from_socket(stream: TcpStream, config: &Config) -> std::io::Result<Self> {
		let address = stream.peer_addr()?;
		Self::from_tcp_with_address(stream, address, config)
	}

	/// [`from_socket`](Self::from_socket) with the remote address already known (from `accept`), so
	/// that a connection reset in the meantime still yields a transport, which then reports the
	/// reset when read.
	fn from_tcp_with_address(stream: TcpStream, address: SocketAddr, config: &Config) -> std::io::Result<Self> {
		stream.set_nodelay(true)?;
		let info = ConnectionInfo {
			remote_address: Some(RemoteAddress::Tcp(address)),
			credentials: None,
			peer_certificate: None,
		};
		let (read, write) = stream.into_split();
		// Loopback TCP takes a 4 MiB write in one call: a peer task on the other end should read
		// while it is written.
		Ok(Self::with_info(read, write, config, info).yielding_before_large_writes())
	}
}

impl Peer<TcpTransport> {
	/// Connect to a TCP address and spawn the peer task.
	pub async fn connect(address: impl ToSocketAddrs, config: &Config) -> Result<(PeerHandle, ConnectionInfo), Error> {
		let stream = TcpStream::connect(address).await?;
		let transport = TcpTransport::from_socket(stream, config)?;
		Ok(super::spawn_connected(transport, config))
	}
}

impl Acceptor for tokio::net::TcpListener {
	type Transport = TcpTransport;

	fn poll_accept(&mut self, cx: &mut Context<'_>, config: &Config) -> Poll<Result<TcpTransport, AcceptError>> {
		let (stream, address) =
			ready!(tokio::net::TcpListener::poll_accept(self, cx)).map_err(AcceptError::from_accept)?;
		Poll::Ready(TcpTransport::from_tcp_with_address(stream, address, config).map_err(AcceptError::Connection))
	}
}

impl Listener<tokio::net::TcpListener> {
	/// Bind a TCP listener.
	pub async fn bind(address: impl ToSocketAddrs, config: &Config) -> Result<Self, Error> {
		Ok(Self::new(tokio::net::TcpListener::bind(address).await?, config))
	}

	/// The local address, for example to learn the port after binding port 0.
	pub fn local_addr(&self) -> Result<std::net::SocketAddr, Error> {
		Ok(self.get_ref().local_addr()?)
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::transport::{Transport, TransportWrite};

	/// Both ends of a TCP connection ask the peer task to yield before a large write (both the
	/// connecting and the accepting constructor); a Unix stream does not.
	#[tokio::test]
	async fn tcp_asks_for_a_yield_before_large_writes_and_a_unix_stream_does_not() {
		let config = Config::default();
		let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
		let connecting = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
		let (accepted, address) = listener.accept().await.unwrap();
		for transport in [
			TcpTransport::from_socket(connecting, &config).unwrap(),
			TcpTransport::from_tcp_with_address(accepted, address, &config).unwrap(),
		] {
			assert!(transport.split().1.yields_before_large_writes());
		}
		#[cfg(feature = "unix-stream")]
		{
			let (a, _b) = tokio::net::UnixStream::pair().unwrap();
			let transport = crate::transport::unix_stream::UnixStreamTransport::from_socket(a, &config).unwrap();
			assert!(!transport.split().1.yields_before_large_writes());
		}
	}
}
