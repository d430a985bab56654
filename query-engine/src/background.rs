//! Background threads yield the CPU to foreground ones. The applier's redb writes, the log's
//! zero-fill and the reclaimer's frees are catch-up work nobody waits for; on a small machine
//! they competed on equal terms with the committer and the subscription threads, and every
//! applier burst showed up as commit→delivery latency. Each such thread is started by `spawn`,
//! which lowers its scheduling priority first (Linux: nice 19 for that thread alone), so the kernel
//! runs it in the time the foreground threads leave idle.
//!
//! Work that something does wait for (the committer waiting on a full memtable, a shutdown
//! waiting for the last batches to reach redb) runs under `Urgent`, which gives the thread its
//! spawner's priority back for as long as it is held: at nice 19 it had the idle time of *this*
//! process only, and beside other busy processes (a build on the same machine) a shutdown took
//! over 15 s. Raising a priority needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it (root
//! has both; systemd's `LimitNICE=`); without, the thread stays low.

/// The weakest nice value: CFS gives such a thread ~1.5 % of a core against one normal thread
/// that wants it, and a waking normal thread preempts it.
#[cfg(target_os = "linux")]
const LOWEST_NICE: libc::c_int = 19;

#[cfg(target_os = "linux")]
thread_local! {
    /// The nice value of the thread that spawned this background thread.
    static SPAWNER_NICE: std::cell::Cell<libc::c_int> = const { std::cell::Cell::new(0) };
}

/// Starts a named background thread that runs `f` at the lowest priority.
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    #[cfg(target_os = "linux")]
    let spawner = current_thread_nice();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            {
                SPAWNER_NICE.set(spawner);
                set_current_thread_nice(LOWEST_NICE);
            }
            f()
        })
}

/// While held, the background thread that took it runs at its spawner's priority (best
/// effort, see the module comment); dropping it lowers the thread again.
pub(crate) struct Urgent {
    /// Not `Send`: it changes the thread that took it.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Urgent {
    pub fn take() -> Self {
        #[cfg(target_os = "linux")]
        set_current_thread_nice(SPAWNER_NICE.get());
        Urgent {
            _thread_bound: std::marker::PhantomData,
        }
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        set_current_thread_nice(LOWEST_NICE);
    }
}

#[cfg(target_os = "linux")]
fn current_thread_nice() -> libc::c_int {
    // SAFETY: gettid and getpriority take no pointers. getpriority may return -1 as a valid
    // nice value; errors cannot happen for the calling thread's own id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Sets the calling thread's nice value. Best effort: on failure (raising without the
/// privilege) the thread keeps its priority.
#[cfg(target_os = "linux")]
fn set_current_thread_nice(nice: libc::c_int) {
    // SAFETY: gettid and setpriority take no pointers; on Linux a PRIO_PROCESS `who` naming a
    // thread id changes that thread only.
    let tid = unsafe { libc::gettid() };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            nice,
            "cannot change a background thread's priority"
        );
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

    #[test]
    fn urgent_work_runs_at_the_spawners_priority_while_held() {
        let spawner = nice_of(unsafe { libc::gettid() });
        let (low, during, after) = spawn("urgent", || {
            let tid = unsafe { libc::gettid() };
            let low = nice_of(tid);
            let urgent = Urgent::take();
            let during = nice_of(tid);
            drop(urgent);
            (low, during, nice_of(tid))
        })
        .expect("spawn")
        .join()
        .expect("thread");
        assert_eq!(low, LOWEST_NICE);
        // Raising needs the privilege; without it the thread stays low.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(during, spawner);
        } else {
            assert!(during == spawner || during == LOWEST_NICE, "{during}");
        }
        assert_eq!(after, LOWEST_NICE);
    }
}
