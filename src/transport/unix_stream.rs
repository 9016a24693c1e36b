//! Unix stream sockets: the stream transport over `tokio::net::UnixStream`.

use std::path::{Path, PathBuf};
use std::task::{Context, Poll, ready};

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::socket_file::remove_stale_socket;
use super::{ConnectionInfo, Credentials, RemoteAddress, StreamTransport};
use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::listener::{AcceptError, Acceptor, Listener};
use crate::peer::Peer;

/// The transport of a Unix stream connection.
pub type UnixStreamTransport = StreamTransport<OwnedReadHalf, OwnedWriteHalf>;
/// A peer on a Unix stream connection.
pub type UnixStreamPeer = Peer<UnixStreamTransport>;
/// A listener for Unix stream connections.
pub type UnixStreamListener = Listener<tokio::net::UnixListener>;

impl UnixStreamTransport {
	/// Wrap a connected Unix stream, recording the remote's credentials.
	pub fn from_socket(stream: UnixStream, config: &Config) -> std::io::Result<Self> {
		let path = stream.peer_addr()?.as_pathname().map(Path::to_path_buf);
		Self::from_unix_with_path(stream, path, config)
	}

	/// [`from_socket`](Self::from_socket) with the remote's path already known (from `accept`).
	fn from_unix_with_path(stream: UnixStream, path: Option<PathBuf>, config: &Config) -> std::io::Result<Self> {
		let info = ConnectionInfo {
			remote_address: Some(RemoteAddress::Unix(path)),
			credentials: Some(Credentials::from(stream.peer_cred()?)),
			peer_certificate: None,
		};
		let (read, write) = stream.into_split();
		Ok(Self::with_info(read, write, config, info))
	}

	/// A connected pair inside one process (or for a parent and the child it forks).
	pub fn pair(config: &Config) -> std::io::Result<(Self, Self)> {
		let (a, b) = UnixStream::pair()?;
		Ok((Self::from_socket(a, config)?, Self::from_socket(b, config)?))
	}
}

impl Peer<UnixStreamTransport> {
	/// Connect to a Unix socket path and spawn the peer task.
	pub async fn connect(path: impl AsRef<Path>, config: &Config) -> Result<(PeerHandle, ConnectionInfo), Error> {
		let stream = UnixStream::connect(path).await?;
		let transport = UnixStreamTransport::from_socket(stream, config)?;
		Ok(super::spawn_connected(transport, config))
	}
}

impl Acceptor for tokio::net::UnixListener {
	type Transport = UnixStreamTransport;

	fn poll_accept(&mut self, cx: &mut Context<'_>, config: &Config) -> Poll<Result<UnixStreamTransport, AcceptError>> {
		let (stream, address) =
			ready!(tokio::net::UnixListener::poll_accept(self, cx)).map_err(AcceptError::from_accept)?;
		let path = address.as_pathname().map(Path::to_path_buf);
		Poll::Ready(UnixStreamTransport::from_unix_with_path(stream, path, config).map_err(AcceptError::Connection))
	}
}

impl Listener<tokio::net::UnixListener> {
	/// Bind a Unix stream listener at `path`.
	///
	/// A stale socket file left by a process that is gone is removed first. If another process
	/// is still accepting on `path`, binding fails with `AddrInUse` instead of stealing it.
	///
	/// The socket file is removed when the listener is dropped (at the end of
	/// [`serve`](crate::server::serve), for example), unless it is no longer the file this
	/// listener bound: a newer server's socket at the same path is left alone. A listener made
	/// with [`Listener::new`] over a socket bound elsewhere leaves its file to whoever bound it.
	pub async fn bind(path: impl AsRef<Path>, config: &Config) -> Result<Self, Error> {
		let path = path.as_ref();
		remove_stale_socket(path).await?;
		Ok(Self::new(tokio::net::UnixListener::bind(path)?, config).remove_on_drop(path))
	}

	/// [`bind`](Self::bind), giving the socket file the mode and group of `permissions`.
	///
	/// The file has them from the first moment it exists at `path`: it is bound in a private
	/// directory beside `path` (mode `0o700`), its mode and group set there, then linked to
	/// `path`. So `path`'s directory must be writable, and `path` short enough to leave about 14
	/// bytes of the 107 a socket path may have. Connecting peers that ask for this socket's
	/// address see that temporary path; [`local_addr`](Self::local_addr) reports `path`.
	pub async fn bind_with_permissions(
		path: impl AsRef<Path>,
		permissions: super::SocketPermissions,
		config: &Config,
	) -> Result<Self, Error> {
		let path = path.as_ref();
		remove_stale_socket(path).await?;
		let listener =
			super::socket_file::bind_with_permissions(path, permissions, |path| tokio::net::UnixListener::bind(path))?;
		Ok(Self::new(listener, config).remove_on_drop(path))
	}

	/// The path this listener is bound to (`None` for an unnamed socket).
	pub fn local_addr(&self) -> Result<Option<PathBuf>, Error> {
		if let Some(path) = self.bound_path() {
			return Ok(Some(path.to_path_buf()));
		}
		Ok(self.get_ref().local_addr()?.as_pathname().map(Path::to_path_buf))
	}
}
