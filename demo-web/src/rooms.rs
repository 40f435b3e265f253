//! The demo's rooms: a fixed list (the business decides which rooms exist and who may join).
//! What was said in them is kept with the rest of the history (history.rs).

/// The rooms that exist.
pub const ROOMS: [&str; 3] = ["lobby", "rust", "random"];

/// The room called `name`, if it exists.
pub fn find(name: &str) -> Option<&'static str> {
    ROOMS.iter().copied().find(|r| *r == name)
}
