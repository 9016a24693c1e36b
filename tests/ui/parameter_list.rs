// A parameter list where one request type belongs.
peerwire::interface! {
	pub mod arm (format = peerwire::typed::Json) {
		service 1 move_to(x: f64, y: f64) -> ();
	}
}

fn main() {}
