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

/// The mode and group a Unix listener gives its socket file, for
/// [`UnixStreamListener::bind_with_permissions`](crate::UnixStreamListener::bind_with_permissions)
/// and its seqpacket twin.
///
/// Connecting to a Unix socket takes write permission on its file, so `0o660` lets the owner and
/// the group in, `0o600` the owner alone. The file has these permissions from the first moment
/// it can be seen at its path: there is no window in which a process outside them could connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPermissions {
	mode: u32,
	group: Option<u32>,
}

impl SocketPermissions {
	/// The permission bits of the socket file (`0o660`, `0o600`); bits above `0o777` are
	/// ignored.
	pub fn mode(mode: u32) -> Self {
		Self { mode: mode & 0o777, group: None }
	}

	/// Also give the file to group `gid` (the process must be a member of it, or privileged).
	pub fn with_group(mut self, gid: u32) -> Self {
		self.group = Some(gid);
		self
	}

	/// The permission bits.
	pub fn permission_bits(&self) -> u32 {
		self.mode
	}

	/// The group, if one is set.
	pub fn group(&self) -> Option<u32> {
		self.group
	}
}

/// Bind a socket at `path` with `permissions`, with no moment at which the file is reachable
/// with wider permissions.
///
/// `bind(2)` creates the socket file with the process's umask, and a `chmod` after it leaves a
/// window in which another process may connect. Setting the umask around the bind would close
/// it, but the umask is per process, so another thread creating files at the same time would get
/// it too. Instead the socket is bound inside a fresh directory of mode `0o700` next to `path`,
/// which no other user can enter; there its mode and group are set, and then it is hard-linked to
/// `path`. `link(2)`, unlike `rename(2)`, fails if `path` exists, so a live server's socket is
/// never replaced. The temporary name and directory are removed at once, whatever happens.
///
/// Peers that ask the kernel for this socket's address (`getpeername`, `local_addr`) see the
/// temporary path it was bound at, not `path`.
pub(crate) fn bind_with_permissions<T>(
	path: &Path,
	permissions: SocketPermissions,
	bind: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
	use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
	let private = PrivateDir::create(path)?;
	let temporary = private.path.join("s");
	let socket = bind(&temporary)?;
	if let Some(gid) = permissions.group {
		std::os::unix::fs::chown(&temporary, None, Some(gid))?;
	}
	std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(permissions.mode))?;
	match std::fs::hard_link(&temporary, path) {
		Ok(()) => {},
		Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
			return Err(std::io::Error::new(
				std::io::ErrorKind::AddrInUse,
				format!("{} exists and is not a stale socket", path.display()),
			));
		},
		Err(error) => return Err(error),
	}
	drop(private);
	return Ok(socket);

	/// A directory only this user can enter, removed with what is in it when dropped.
	struct PrivateDir {
		path: PathBuf,
	}

	impl PrivateDir {
		fn create(beside: &Path) -> std::io::Result<Self> {
			let parent = match beside.parent() {
				Some(parent) if !parent.as_os_str().is_empty() => parent,
				_ => Path::new("."),
			};
			static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
			let mut tries = 0;
			loop {
				// Short, so that the temporary socket path stays within the 107 bytes of sun_path
				// whenever `beside` is within 93.
				let nonce = std::process::id() ^ NEXT.fetch_add(0x9e37_79b9, std::sync::atomic::Ordering::Relaxed);
				let path = parent.join(format!(".pw{nonce:08x}"));
				match std::fs::DirBuilder::new().mode(0o700).create(&path) {
					Ok(()) => return Ok(Self { path }),
					Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
					Err(error) => return Err(error),
				}
			}
		}
	}

	impl Drop for PrivateDir {
		fn drop(&mut self) {
			let _ = std::fs::remove_file(self.path.join("s"));
			if let Err(error) = std::fs::remove_dir(&self.path) {
				tracing::debug!(path = %self.path.display(), "could not remove the temporary socket directory: {error}");
			}
		}
	}
}
