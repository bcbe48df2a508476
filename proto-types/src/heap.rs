//! Allocator settings for the daemons that build and free a batch of spans at a time.
//!
//! glibc's defaults give memory back as soon as more than 128 KiB is free at the top of the heap
//! (and move the mmap threshold as blocks come and go), so a batch's half a megabyte was returned
//! and faulted in again, page by page, for every batch: ~0.4 µs per span of the exporter's decode
//! on this project's VM. Fixed thresholds keep up to [`KEEP_FREE`] for the next batch; the
//! correlator's periodic `malloc_trim` still gives back what a burst left behind.

/// Free memory glibc may keep at the top of the heap.
const KEEP_FREE: i32 = 2 << 20;
/// Allocations at least this large get their own mapping (frames near the size cap, say).
const OWN_MAPPING: i32 = 1 << 20;

/// Applies the settings; call once, before the daemon's first batch.
pub fn keep_batch_memory() {
    // SAFETY: mallopt only sets glibc allocator parameters; both values are in range.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE) == 1
    };
    if !ok {
        tracing::warn!("allocator thresholds not set: batches may fault their memory in each time");
    }
}
