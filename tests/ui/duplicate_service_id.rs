// A copy-pasted service id: the second service could never be reached.
peerwire::interface! {
	pub mod arm (format = peerwire::typed::Json) {
		service 1 move_to(f64) -> f64;
		service 1 home -> ();
	}
}

fn main() {}
