//! Why a command failed: one line for standard error and the exit code that goes with it.

use std::io;
use std::process::ExitCode;

use peerwire::ErrorKind;

/// The remote answered with an error response.
pub const EXIT_ERROR_RESPONSE: u8 = 1;
/// Bad arguments or input.
pub const EXIT_USAGE: u8 = 2;
/// Connection refused, closed, I/O or protocol error.
pub const EXIT_CONNECTION: u8 = 3;
/// A deadline passed.
pub const EXIT_TIMEOUT: u8 = 4;

/// A failed command.
#[derive(Debug)]
pub struct Failure {
	code: u8,
	message: String,
}

impl Failure {
	pub fn new(code: u8, message: impl Into<String>) -> Self {
		Self { code, message: message.into() }
	}

	/// Bad arguments or input.
	pub fn usage(message: impl Into<String>) -> Self {
		Self::new(EXIT_USAGE, message)
	}

	/// A connection-level failure.
	pub fn connection(message: impl Into<String>) -> Self {
		Self::new(EXIT_CONNECTION, message)
	}

	/// An I/O error while doing `what`.
	pub fn io(what: &str, error: &io::Error) -> Self {
		Self::connection(format!("{what}: {}", describe_io(error)))
	}

	/// A peerwire error, said in `message`, with the exit code its kind calls for.
	pub fn peer(error: &peerwire::Error, message: String) -> Self {
		let code = match error.kind() {
			ErrorKind::Timeout => EXIT_TIMEOUT,
			// Refused before anything was sent: the input is at fault, not the connection.
			ErrorKind::BodyTooLarge | ErrorKind::TooManyFds => EXIT_USAGE,
			_ => EXIT_CONNECTION,
		};
		Self::new(code, message)
	}

	/// Print the line and turn it into the process exit code.
	pub fn report(self) -> ExitCode {
		eprintln!("peerwire: {}", self.message);
		ExitCode::from(self.code)
	}
}

/// A peerwire error in a few words, without the layers a person does not need.
pub fn describe(error: &peerwire::Error) -> String {
	if let Some(io_error) = error.io_error() {
		return describe_io(io_error);
	}
	if let Some(violation) = error.protocol_violation() {
		return format!("protocol violation: {violation}");
	}
	if error.kind() == ErrorKind::BodyTooLarge {
		return format!("{error} (raise the limit with --max-body)");
	}
	if let Some(cause) = closing_cause(error).filter(|cause| cause.kind() == ErrorKind::BodyTooLarge) {
		return format!("the remote sent too large a body ({cause}; raise the limit with --max-body)");
	}
	error.to_string()
}

/// The error that ended the connection, for a connection-closed error that has one.
pub fn closing_cause(error: &peerwire::Error) -> Option<&peerwire::Error> {
	std::error::Error::source(error).and_then(|cause| cause.downcast_ref::<peerwire::Error>())
}

/// An I/O error in a few words: "connection refused" rather than "Connection refused (os error 111)".
pub fn describe_io(error: &io::Error) -> String {
	if error.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) {
		return "message too large for the socket".into();
	}
	if error.raw_os_error().is_none() {
		// A message written by a person (for example "... is in use by a running server").
		return error.to_string();
	}
	let text = match error.kind() {
		io::ErrorKind::ConnectionRefused => "connection refused",
		io::ErrorKind::ConnectionReset => "connection reset by the remote",
		io::ErrorKind::ConnectionAborted => "connection aborted",
		io::ErrorKind::BrokenPipe => "connection closed by the remote (broken pipe)",
		io::ErrorKind::NotFound => "no such file or directory",
		io::ErrorKind::PermissionDenied => "permission denied",
		io::ErrorKind::AddrInUse => "address already in use",
		io::ErrorKind::AddrNotAvailable => "address not available",
		io::ErrorKind::TimedOut => "timed out",
		_ => return error.to_string(),
	};
	text.to_string()
}
