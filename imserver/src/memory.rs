//! Memory after a peak: the allocator, and maps that give their room back. The node's memory
//! swings with its clients: a soak of 10,000 clients coming and going peaks at about 350 MiB of
//! connections and recovery buffers, all of it freed when they are gone. glibc's allocator kept
//! most of that resident (106 MiB after such a run even with `malloc_trim` after large frees,
//! against 8 MiB at start); jemalloc with its background threads gives freed pages back within
//! its decay time (10 s) by itself, and ended the same run at 39 MiB. The binary installs it as
//! the global allocator; this turns the purging threads on.

/// Lets jemalloc return freed memory to the system from its own threads, also while the node
/// is idle. Returns whether it could.
pub fn return_freed_memory_in_background() -> bool {
    tikv_jemalloc_ctl::background_thread::write(true).is_ok()
}

/// What the allocator says, in bytes: held by live allocations, and resident (live plus what it
/// keeps for reuse and its own bookkeeping). Zeros where jemalloc is not the allocator.
pub fn allocator_bytes() -> (u64, u64) {
    if tikv_jemalloc_ctl::epoch::advance().is_err() {
        return (0, 0);
    }
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0);
    let resident = tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0);
    (allocated as u64, resident as u64)
}

/// Gives back most of a map's room once it holds far fewer entries than it has room for: maps
/// keep their peak size otherwise, and a node's peak (every client of a busy hour) is far above
/// its usual load.
pub fn shrink_if_sparse<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}
