//! Socket files on the file system, shared by the Unix stream and seqpacket listeners.

use std::path::Path;

/// Remove a socket file at `path` if nothing listens on it any more.
///
/// The probe is a stream connect. A stale file (no socket bound to it) refuses every connect,
/// whatever the type of the socket that left it, and is removed. A live socket of another type
/// (a seqpacket server) fails the probe with `EPROTOTYPE`: it is left alone, and the bind that
/// follows reports the conflict.
pub(crate) async fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
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
