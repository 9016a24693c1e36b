//! Socket files on the file system, shared by the Unix stream and seqpacket listeners: a stale
//! one is removed before bind, and a listener's own is removed when it is dropped.

use std::path::{Path, PathBuf};

/// Remove a socket file at `path` if nothing listens on it any more.
///
/// The probe is a stream connect. A stale file (no socket bound to it) refuses every connect,
/// whatever the type of the socket that left it, and is removed. A live socket of another type
/// (a seqpacket server) fails the probe with `EPROTOTYPE`: it is left alone, and the bind that
/// follows reports the conflict.
pub async fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
	use std::os::unix::fs::FileTypeExt;
	let Ok(metadata) = std::fs::symlink_metadata(path) else {
		return Ok(());
	};
	if !metadata.file_type().is_socket() {
		// Not ours to remove: let bind report the conflict.
		return Ok(());
	}
	match tokio::net::UnixStream::connect(path).await {
		Ok(_) => Err(std::io::Error::new(
			std::io::ErrorKind::AddrInUse,
			format!("{} is in use by a running server", path.display()),
		)),
		Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
			tracing::debug!(path = %path.display(), "removing stale socket file");
			std::fs::remove_file(path)
		},
		Err(_) => Ok(()),
	}
}

/// The socket file a listener bound, removed when the listener is dropped, but only if it is
/// still the same file: a newer server that removed it as stale (or had it removed) and bound its
/// own socket at the path keeps it.
#[derive(Debug)]
pub struct SocketFile {
	path: PathBuf,
	/// Device and inode of the file as bound: what tells it apart from a newer file at the path.
	dev: u64,
	ino: u64,
}

impl SocketFile {
	/// Remember the socket file just bound at `path`; `None` if it cannot be looked at (then it
	/// is left behind on drop, as before, and the next bind removes it as stale).
	pub fn bound(path: &Path) -> Option<Self> {
		use std::os::unix::fs::MetadataExt;
		match std::fs::symlink_metadata(path) {
			// Absolute, so that a change of working directory does not send the removal elsewhere.
			Ok(metadata) => Some(Self {
				path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
				dev: metadata.dev(),
				ino: metadata.ino(),
			}),
			Err(error) => {
				tracing::debug!(path = %path.display(), "cannot look at the bound socket file; it will be left behind: {error}");
				None
			},
		}
	}
}

impl Drop for SocketFile {
	fn drop(&mut self) {
		use std::os::unix::fs::MetadataExt;
		// Another process could swap the file between this check and the removal; binding over
		// a live server's socket needs that server's file removed first, so such a race takes two
		// servers misconfigured to share a path.
		let Ok(metadata) = std::fs::symlink_metadata(&self.path) else {
			return;
		};
		if metadata.dev() != self.dev || metadata.ino() != self.ino {
			tracing::debug!(path = %self.path.display(), "socket file replaced by another: leaving it");
			return;
		}
		match std::fs::remove_file(&self.path) {
			Ok(()) => tracing::debug!(path = %self.path.display(), "removed the socket file"),
			Err(error) => tracing::debug!(path = %self.path.display(), "could not remove the socket file: {error}"),
		}
	}
}
