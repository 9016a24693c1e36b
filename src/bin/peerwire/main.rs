//! `peerwire`: call services, send stream messages, listen and watch traffic from the shell.
//!
//! Built with the `cli` feature. Each subcommand lives in its own module; this file holds the
//! argument definitions, the options every subcommand shares, and the exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod address;
mod body;
mod call;
mod connect;
mod failure;
mod listen;
mod output;
mod scan;
mod send;
mod stats;
mod tap;

use address::Address;
use body::{BodySource, Respond, Update};
use failure::Failure;

macro_rules! addresses_help {
	() => {
		"\
Addresses:
  tcp://HOST:PORT        TCP, for example tcp://127.0.0.1:29285 or tcp://[::1]:29285
  tls://HOST:PORT        TLS over TCP; see --ca, --cert and --key
  unix:///PATH           a Unix stream socket (unix://relative/path works too)
  seqpacket:///PATH      a Unix seqpacket socket, which can carry file descriptors"
	};
}

macro_rules! bodies_help {
	() => {
		"\
Bodies (BODY arguments and the body part of --update):
  TEXT                   the text itself
  @FILE                  the contents of FILE (@@TEXT sends the literal text @TEXT)
  -                      standard input; also the default when BODY is left out and
                         standard input is not a terminal"
	};
}

macro_rules! output_help {
	() => {
		"\
Output:
  One line per event on standard output, for people by default; with --json one JSON
  object per line, for jq: every object has \"event\" first (\"message\", \"listening\",
  \"connected\", \"closed\", ...); a message has \"type\", \"request_id\", \"service_id\",
  \"body_len\", \"fds\", \"truncated\" and either \"body\" (printable UTF-8) or \"body_hex\".
  Errors go to standard error, one line each."
	};
}

macro_rules! stats_help {
	() => {
		"\
Statistics (--stats):
  Every interval, listen prints a \"listener_stats\" line (accepted, refused_by_admission,
  refused_by_limit, open) and tap a \"total_stats\" line (all connections so far), then one
  \"stats\" line per open connection; a connection's last counts come once more, with
  \"final\":true (final_stats for people), just before its \"closed\" line. In JSON, each
  direction is {\"messages\":{\"request\":N,...,\"total\":N},\"body_bytes\":{...},
  \"error_responses\":N}: listen's \"received\" and \"sent\", with open requests each way
  and their peaks, auto_replies, stray_messages, protocol_errors, send_blocked_ms and
  read_paused_ms; tap's \"client_to_server\" and \"server_to_client\", with \"malformed\"
  and \"forwarded_bytes\"."
	};
}

macro_rules! exit_codes_help {
	() => {
		"\
Exit codes:
  0  success
  1  the remote answered with an error response (call)
  2  bad arguments or input (address, body file, size, duration, body over --max-body)
  3  connection error: refused, closed, I/O or protocol error
  4  timed out (call --timeout)"
	};
}

/// Talk to peers of the Fizyr RPC protocol: call services, send stream messages, listen for
/// connections and watch the traffic between two peers.
#[derive(Debug, Parser)]
#[command(name = "peerwire", version)]
#[command(after_help = concat!(addresses_help!(), "\n\n", bodies_help!(), "\n\n", output_help!(), "\n\n", exit_codes_help!()))]
struct Cli {
	#[command(flatten)]
	global: Global,

	#[command(subcommand)]
	command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Args)]
struct Global {
	/// Print one JSON object per line instead of text for people.
	#[arg(long, global = true)]
	json: bool,

	/// Byte order of the frame length and the header fields; both sides must agree.
	#[arg(long, global = true, value_enum, default_value_t = EndianArg::Little)]
	endian: EndianArg,

	/// The largest body to send or accept, in bytes (binary suffixes K, M, G allowed).
	#[arg(long, global = true, value_name = "SIZE", default_value = "16M", value_parser = body::parse_size)]
	max_body: usize,

	/// Do not print progress lines for bodies over 1 MiB on standard error (call, send, tap).
	#[arg(short, long, global = true)]
	quiet: bool,

	#[command(flatten)]
	tls: TlsArgs,
}

/// The options of tls:// addresses. The server's certificate is always verified; there is no
/// option to skip that.
#[derive(Debug, Clone, Args)]
struct TlsArgs {
	/// CA certificates, PEM. call/send: trust servers whose certificate they signed (instead of
	/// the system's trusted roots). listen: require a client certificate they signed (mutual
	/// TLS).
	#[arg(long, global = true, value_name = "FILE")]
	ca: Option<PathBuf>,

	/// Certificate chain, PEM. listen: the server's (required for tls://). call/send: the
	/// client's, for servers that ask for one (mutual TLS); needs --key.
	#[arg(long, global = true, value_name = "FILE", requires = "key")]
	cert: Option<PathBuf>,

	/// The private key of --cert, PEM.
	#[arg(long, global = true, value_name = "FILE", requires = "cert")]
	key: Option<PathBuf>,

	/// call/send: the name the server's certificate must carry (default: the HOST of
	/// tls://HOST:PORT).
	#[arg(long, global = true, value_name = "NAME")]
	server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EndianArg {
	/// The protocol's byte order.
	Little,
	/// Most significant byte first.
	Big,
	/// The byte order of this machine.
	Native,
}

impl Global {
	fn config(&self) -> peerwire::Config {
		let endian = match self.endian {
			EndianArg::Little => peerwire::codec::Endian::Little,
			EndianArg::Big => peerwire::codec::Endian::Big,
			EndianArg::Native => peerwire::codec::Endian::Native,
		};
		peerwire::Config::default()
			.with_endian(endian)
			.with_max_body_len_read(self.max_body)
			.with_max_body_len_write(self.max_body)
	}
}

#[derive(Debug, Subcommand)]
enum Command {
	/// Send a request, print each responder update as it arrives, then the response.
	///
	/// Exits with 1 if the response is an error response (negative service id), 3 on a
	/// connection error and 4 on a timeout. Bodies over 1 MiB show progress on standard error.
	#[command(after_help = concat!(addresses_help!(), "\n\n", bodies_help!(), "\n\n", exit_codes_help!()))]
	Call(CallArgs),

	/// Send one or more stream messages (one-way, no answer), then close the connection.
	#[command(after_help = concat!(addresses_help!(), "\n\n", bodies_help!(), "\n\n", exit_codes_help!()))]
	Send(SendArgs),

	/// Accept connections and print every message received.
	///
	/// Requests are answered with --respond for their service id, else with --echo; without
	/// either, every request gets an error response saying that nothing is configured.
	#[command(after_help = concat!(addresses_help!(), "\n\n", output_help!(), "\n\n", stats_help!()))]
	Listen(ListenArgs),

	/// A transparent proxy: accept connections on LISTEN, connect each to UPSTREAM, forward
	/// everything both ways unchanged and print each message decoded.
	///
	/// Either both addresses are byte streams (tcp:// or unix://, mixed as you like) or both
	/// are seqpacket:// sockets, whose datagrams are forwarded one by one with their file
	/// descriptors. What passes is forwarded verbatim, so the tap is transparent whatever the
	/// peers speak; --endian only sets how it decodes what it shows. A malformed frame (or one
	/// with a body over --max-body) is reported with its byte offset on a byte stream, after
	/// which that direction is forwarded undecoded, and with its index on a seqpacket socket.
	/// Bodies over 1 MiB show progress on standard error.
	#[command(after_help = concat!(addresses_help!(), "\n\n", output_help!(), "\n\n", stats_help!()))]
	Tap(TapArgs),
}

#[derive(Debug, Args)]
struct CallArgs {
	/// Where to connect.
	address: Address,

	/// The service to call.
	#[arg(allow_negative_numbers = true)]
	service_id: i32,

	/// The request body: TEXT, @FILE, or - for standard input (see below).
	body: Option<BodySource>,

	/// Give up if the response has not arrived this long after starting (500ms, 2s, 1m; plain
	/// numbers are seconds). Connecting counts too.
	#[arg(long, value_name = "DURATION", value_parser = body::parse_duration)]
	timeout: Option<Duration>,

	/// Send a requester update after the request, as SERVICE_ID:BODY; repeat for more, they go
	/// in order. BODY is TEXT or @FILE.
	#[arg(long = "update", value_name = "ID:BODY", allow_hyphen_values = true)]
	updates: Vec<Update>,

	/// Attach a file descriptor of PATH (opened read-only) to the request; repeat for more.
	/// seqpacket:// addresses only.
	#[arg(long = "fd", value_name = "PATH")]
	fds: Vec<PathBuf>,

	/// Show at most this many bytes of each body (default: all of it).
	#[arg(long, value_name = "BYTES", value_parser = body::parse_size)]
	preview: Option<usize>,
}

#[derive(Debug, Args)]
struct SendArgs {
	/// Where to connect.
	address: Address,

	/// The service id of the stream messages.
	#[arg(allow_negative_numbers = true)]
	service_id: i32,

	/// The body of every message: TEXT, @FILE, or - for standard input.
	body: Option<BodySource>,

	/// How many messages to send, all with the same body.
	#[arg(long, short = 'n', default_value_t = 1)]
	count: u64,

	/// Attach a file descriptor of PATH (opened read-only) to every message; repeat for more.
	/// seqpacket:// addresses only.
	#[arg(long = "fd", value_name = "PATH")]
	fds: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct ListenArgs {
	/// Where to listen (tcp://HOST:0 picks a free port; the "listening" line shows it).
	address: Address,

	/// Answer every request with its own body (service id 0). Without --echo or --respond,
	/// every request gets an error response.
	#[arg(long)]
	echo: bool,

	/// Answer requests for SERVICE_ID with the contents of FILE (service id 0); repeatable.
	/// Takes precedence over --echo.
	#[arg(long = "respond", value_name = "SERVICE_ID=FILE", allow_hyphen_values = true)]
	responds: Vec<Respond>,

	/// Show at most this many bytes of each body.
	#[arg(long, value_name = "BYTES", default_value = "64", value_parser = body::parse_size)]
	preview: usize,

	/// Keep at most N connections open; past it, new connections are accepted and closed at
	/// once (the client sees the connection close). Default: no limit.
	#[arg(long, value_name = "N")]
	max_connections: Option<usize>,

	/// Disconnect a client that starts a frame and does not finish it within DURATION (500ms,
	/// 10s, 1m, 1h; plain numbers are seconds). Default: no limit.
	#[arg(long, value_name = "DURATION", value_parser = body::parse_duration)]
	frame_timeout: Option<Duration>,

	/// Close a connection that stays idle (no request open, nothing read or written) for
	/// DURATION (500ms, 10s, 1m, 1h; plain numbers are seconds). Default: no limit.
	#[arg(long, value_name = "DURATION", value_parser = body::parse_duration)]
	idle_timeout: Option<Duration>,

	/// unix:// and seqpacket:// only: the mode of the socket file, in octal (660 lets the owner
	/// and the group connect, 600 the owner alone). The file never exists with wider
	/// permissions. Default: what the umask leaves.
	#[arg(long, value_name = "OCTAL", value_parser = listen::parse_mode)]
	mode: Option<u32>,

	/// unix:// and seqpacket:// only: give the socket file to GROUP (a name or a number).
	#[arg(long, value_name = "GROUP", requires = "mode")]
	group: Option<String>,

	/// Admit only Unix socket clients running as UID; repeatable. With several --allow-*
	/// options, a client matching any of them is admitted; others are closed before anything is
	/// read and shown as "refused".
	#[arg(long = "allow-uid", value_name = "UID")]
	allow_uids: Vec<u32>,

	/// Admit only Unix socket clients whose primary group is GID; repeatable.
	#[arg(long = "allow-gid", value_name = "GID")]
	allow_gids: Vec<u32>,

	/// Admit only TCP and TLS clients from this IP address; repeatable.
	#[arg(long = "allow-ip", value_name = "IP")]
	allow_ips: Vec<std::net::IpAddr>,

	/// Admit only TLS clients whose verified certificate names NAME (DNS name, common name or
	/// URI); repeatable. Needs --ca (mutual TLS).
	#[arg(long = "allow-name", value_name = "NAME", requires = "ca")]
	allow_names: Vec<String>,

	/// Print a summary of the counters every INTERVAL (default 10s; 500ms, 2s, 1m; plain
	/// numbers are seconds): the listener's, and each open connection's messages and body
	/// bytes in and out by type, open requests, automatic replies, stray messages, protocol errors
	/// and time blocked. `--stats 2s` or `--stats=2s` for another interval.
	#[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = stats::DEFAULT_INTERVAL, value_parser = body::parse_duration)]
	stats: Option<Duration>,
}

#[derive(Debug, Args)]
struct TapArgs {
	/// Where clients connect to the tap.
	listen: Address,

	/// Where the tap connects for each client: the real server.
	upstream: Address,

	/// Show at most this many bytes of each body (the tap never holds more of a body than this).
	#[arg(long, value_name = "BYTES", default_value = "64", value_parser = body::parse_size)]
	preview: usize,

	/// Print a summary of the counters every INTERVAL (default 10s; 500ms, 2s, 1m; plain
	/// numbers are seconds): per open connection and in total, the messages and body bytes
	/// decoded each way by type, the malformed frames and the bytes forwarded. `--stats 2s` or
	/// `--stats=2s` for another interval.
	#[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = stats::DEFAULT_INTERVAL, value_parser = body::parse_duration)]
	stats: Option<Duration>,
}

/// The command line with a bare `--stats` (no interval) spelled `--stats=10s` when the word
/// after it is not an interval. clap gives an option with an optional value the next word
/// whatever it is, so `peerwire listen --stats tcp://127.0.0.1:1337` would read the address as
/// the interval and fail. Words after `--` are left as they are.
fn bare_stats_made_explicit(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
	let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
	let end = args.iter().position(|arg| arg == "--").unwrap_or(args.len());
	for i in 0..end {
		if args[i] != "--stats" {
			continue;
		}
		let interval_follows = args[..end]
			.get(i + 1)
			.and_then(|next| next.to_str())
			.is_some_and(|next| body::parse_duration(next).is_ok());
		if !interval_follows {
			args[i] = format!("--stats={}", stats::DEFAULT_INTERVAL).into();
		}
	}
	args
}

fn main() -> ExitCode {
	let cli = Cli::parse_from(bare_stats_made_explicit(std::env::args_os()));
	let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
		Ok(runtime) => runtime,
		Err(error) => return Failure::io("cannot start the async runtime", &error).report(),
	};
	let result = runtime.block_on(async {
		match cli.command {
			Command::Call(args) => call::run(args, &cli.global).await,
			Command::Send(args) => send::run(args, &cli.global).await,
			Command::Listen(args) => listen::run(args, &cli.global).await,
			Command::Tap(args) => tap::run(args, &cli.global).await,
		}
	});
	// Do not wait for connection tasks still winding down.
	runtime.shutdown_background();
	match result {
		Ok(()) => ExitCode::SUCCESS,
		Err(failure) => failure.report(),
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn made_explicit(args: &[&str]) -> Vec<String> {
		bare_stats_made_explicit(args.iter().map(std::ffi::OsString::from))
			.into_iter()
			.map(|arg| arg.into_string().unwrap())
			.collect()
	}

	#[test]
	fn a_bare_stats_before_the_address_takes_the_default_interval() {
		assert_eq!(
			made_explicit(&["peerwire", "listen", "--stats", "tcp://127.0.0.1:1337", "--echo"]),
			["peerwire", "listen", "--stats=10s", "tcp://127.0.0.1:1337", "--echo"]
		);
		assert_eq!(
			made_explicit(&["peerwire", "listen", "unix:///tmp/s", "--stats"]),
			["peerwire", "listen", "unix:///tmp/s", "--stats=10s"]
		);
		assert_eq!(made_explicit(&["peerwire", "tap", "--stats", "--json", "a", "b"])[2], "--stats=10s");
	}

	#[test]
	fn an_interval_after_stats_and_words_after_a_double_dash_are_kept() {
		let kept = ["peerwire", "listen", "tcp://127.0.0.1:1337", "--stats", "2s", "--stats=500ms"];
		assert_eq!(made_explicit(&kept), kept);
		let after_dash = ["peerwire", "call", "tcp://127.0.0.1:1337", "7", "--", "--stats"];
		assert_eq!(made_explicit(&after_dash), after_dash);
	}

	#[test]
	fn clap_parses_a_bare_stats_before_the_address() {
		let cli = Cli::try_parse_from(bare_stats_made_explicit(
			["peerwire", "listen", "--stats", "tcp://127.0.0.1:1337"].map(std::ffi::OsString::from),
		))
		.unwrap();
		let Command::Listen(listen) = cli.command else { panic!("not listen") };
		assert_eq!(listen.stats, Some(Duration::from_secs(10)));
	}
}
