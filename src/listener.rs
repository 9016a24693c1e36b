//! Accepting connections: one generic [`Listener`] over every transport's listening socket.

use std::future::poll_fn;
use std::task::{Context, Poll};

use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::peer::Peer;
use crate::transport::{ConnectionInfo, Transport};

/// A listening socket that yields transports.
pub trait Acceptor: Send + 'static {
	/// The transport of an accepted connection.
	type Transport: Transport;

	/// Accept the next connection.
	fn poll_accept(&mut self, cx: &mut Context<'_>, config: &Config) -> Poll<std::io::Result<Self::Transport>>;
}

/// Accepts connections and starts a [`Peer`] for each.
///
/// ```no_run
/// # async fn demo() -> Result<(), peerwire::Error> {
/// use peerwire::{Config, ReceivedMessage, TcpListener};
///
/// let mut listener = TcpListener::bind("127.0.0.1:1337", Config::default()).await?;
/// loop {
///     let (mut peer, info) = listener.accept().await?;
///     tokio::spawn(async move {
///         while let Ok(message) = peer.recv_message().await {
///             if let ReceivedMessage::Request(request, body) = message {
///                 let _ = request.send_response(0, body).await;
///             }
///         }
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Listener<A: Acceptor> {
	acceptor: A,
	config: Config,
}

impl<A: Acceptor> Listener<A> {
	/// A listener over an already bound socket.
	pub fn new(acceptor: A, config: Config) -> Self {
		Self { acceptor, config }
	}

	/// Accept the next connection, spawn its peer task, and return its handle and what is known
	/// about the remote.
	///
	/// An error here concerns this one accept (for example the process is out of descriptors);
	/// the listener keeps working, so a server loop should log it and accept again.
	pub async fn accept(&mut self) -> Result<(PeerHandle<<A::Transport as Transport>::Body>, ConnectionInfo), Error> {
		let transport = self.accept_transport().await?;
		let info = transport.info();
		Ok((Peer::spawn(transport, &self.config), info))
	}

	/// Accept the next connection as a bare transport, to run its [`Peer`] yourself.
	pub async fn accept_transport(&mut self) -> Result<A::Transport, Error> {
		let Self { acceptor, config } = self;
		Ok(poll_fn(|cx| acceptor.poll_accept(cx, config)).await?)
	}

	/// The configuration every accepted connection gets.
	pub fn config(&self) -> &Config {
		&self.config
	}

	/// The listening socket.
	pub fn get_ref(&self) -> &A {
		&self.acceptor
	}
}
