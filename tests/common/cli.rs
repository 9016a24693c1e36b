//! The `peerwire` binary as a long-running process, for tests/cli.rs and tests/wireshark.rs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_peerwire");
/// Generous, but finite: a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

/// A long-running `peerwire` process (listen, tap), killed when dropped.
pub struct Background {
	child: Child,
	lines: mpsc::Receiver<String>,
}

impl Background {
	pub fn spawn(args: &[&str]) -> Self {
		let mut child = Command::new(BIN)
			.args(args)
			.stdin(Stdio::null())
			.stdout(Stdio::piped())
			.stderr(Stdio::inherit())
			.spawn()
			.expect("the peerwire binary starts");
		let stdout = child.stdout.take().unwrap();
		let (sender, lines) = mpsc::channel();
		thread::spawn(move || {
			for line in BufReader::new(stdout).lines() {
				let Ok(line) = line else { break };
				if sender.send(line).is_err() {
					break;
				}
			}
		});
		Self { child, lines }
	}

	/// The next line of standard output.
	pub fn line(&self) -> String {
		self.lines.recv_timeout(WAIT).expect("a line from peerwire within the deadline")
	}

	/// The next line, as JSON.
	pub fn json(&self) -> Value {
		let line = self.line();
		serde_json::from_str(&line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
	}

	/// JSON lines up to and including the first for which `last` holds.
	pub fn json_until(&self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
		let mut values = Vec::new();
		loop {
			let value = self.json();
			let done = last(&value);
			values.push(value);
			if done {
				return values;
			}
		}
	}

	/// Start a listener or tap with `--json` and return it with the address it listens on.
	pub fn listening(args: &[&str]) -> (Self, String) {
		let process = Self::spawn(args);
		let first = process.json();
		assert_eq!(first["event"], "listening", "{first}");
		let address = first["address"].as_str().unwrap().to_string();
		(process, address)
	}
}

impl Background {
	/// Interrupt the process (SIGINT, as Ctrl-C), wait for it, and return the lines it printed
	/// that were not read yet.
	pub fn stop(mut self) -> Vec<String> {
		let pid = rustix::process::Pid::from_child(&self.child);
		rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
		let _ = self.child.wait();
		let mut lines = Vec::new();
		// Up to the end of its output, which the reader sees once the process has exited.
		while let Ok(line) = self.lines.recv_timeout(WAIT) {
			lines.push(line);
		}
		lines
	}
}

impl Drop for Background {
	fn drop(&mut self) {
		let _ = self.child.kill();
		let _ = self.child.wait();
	}
}
