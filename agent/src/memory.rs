//! Process-wide memory tuning for the long-running agent.
//!
//! The imager allocates 4 MiB I/O buffers on many threads (decode workers, per-target writers,
//! read-back workers). glibc gives every thread that allocates its own malloc arena (up to 8 per
//! core) and raises its mmap threshold after the first large free, so freed buffers stay
//! resident in whichever arena they came from. With four bays busy that retained memory pushed
//! the agent's RSS to about 230 MiB; capping the arenas at two keeps buffers reused across
//! threads and the peak under 200 MiB at the same throughput (`bench/agent.sh`, measured:
//! 229 MiB -> 192 MiB). Forcing every buffer through mmap instead (a fixed mmap threshold) cut
//! RSS further but cost page faults on every buffer and halved throughput.

/// Caps glibc's malloc arenas. Call before any thread is spawned. No-op on other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before other threads exist,
        // and M_ARENA_MAX takes any positive value.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        if ok != 1 {
            tracing::debug!("mallopt(M_ARENA_MAX) was refused; memory use may be higher");
        }
    }
}
