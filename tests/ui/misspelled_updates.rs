// A misspelled update block.
peerwire::interface! {
	pub mod arm (format = peerwire::typed::Json) {
		service 1 move_to(f64) -> f64 {
			responder_update { 1 progress(u8) }
		}
	}
}

fn main() {}
