//! Background threads yield the CPU to foreground ones. The applier's redb writes, the log's
//! zero-fill and the reclaimer's frees are catch-up work nobody waits for; on a small machine
//! they competed on equal terms with the committer and the subscription threads, and every
//! applier burst showed up as commit→delivery latency. Each such thread is started by `spawn`,
//! which lowers its scheduling priority first (Linux: nice 19 for that thread alone), so the kernel
//! runs it in the time the foreground threads leave idle. Work that something does wait for
//! (the committer waiting on a full memtable) still gets done: once the foreground stalls,
//! the CPU is idle and the background thread has it.

/// The weakest nice value: CFS gives such a thread ~1.5 % of a core against one normal thread
/// that wants it, and a waking normal thread preempts it.
#[cfg(target_os = "linux")]
const LOWEST_NICE: libc::c_int = 19;

/// Starts a named background thread that runs `f` at the lowest priority.
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_current_thread_priority();
            f()
        })
}

/// Lowers the calling thread's scheduling priority as far as it goes. Best effort: on failure,
/// or off Linux, the thread runs at normal priority.
fn lower_current_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; on Linux a PRIO_PROCESS `who`
        // naming a thread id changes that thread only.
        let tid = unsafe { libc::gettid() };
        let Ok(tid) = libc::id_t::try_from(tid) else {
            return;
        };
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, LOWEST_NICE) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower thread priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: as above; getpriority can return -1 legitimately, which no test here expects.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    #[test]
    fn only_the_spawned_thread_is_lowered() {
        let own = unsafe { libc::gettid() };
        let before = nice_of(own);
        let handle = spawn("lowered", || {
            let tid = unsafe { libc::gettid() };
            (
                nice_of(tid),
                tid,
                std::thread::current().name().map(str::to_string),
            )
        })
        .expect("spawn");
        let (lowered, tid, name) = handle.join().expect("thread");
        assert_eq!(name.as_deref(), Some("lowered"));
        assert_ne!(tid, own);
        assert_eq!(lowered, LOWEST_NICE);
        assert_eq!(
            nice_of(own),
            before,
            "the caller's other threads keep their priority"
        );
    }
}
