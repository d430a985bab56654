//! What decoding a client message allocates, measured by this test binary's own global
//! allocator, which counts the bytes each thread has allocated and the most it held at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use query_engine::protocol::{validate_client, CallKind, ClientMessage};
use query_engine::value::Value;

struct Counting;

thread_local! {
    /// Bytes this thread has allocated and not freed (freeing another thread's allocation
    /// counts against it: only differences within one thread are read).
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// The most `HELD` has been since `peak_of` last reset it.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(change: isize) {
    // `try_with`: the thread may be tearing down its locals.
    let _ = HELD.try_with(|held| {
        let now = held.get() + change;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; the counting only reads sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` returns, and the most bytes it held allocated at once on this thread beyond what
/// was held before (its result is dropped after the measurement).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get) - before;
    (out, usize::try_from(peak).unwrap_or(0))
}

fn call(args: Value) -> ClientMessage {
    ClientMessage::Call {
        request_id: 1,
        kind: CallKind::Query,
        function: "f".into(),
        args,
        mutation_id: None,
    }
}

/// Checking the nesting of a call's arguments walks them holding one entry per level, not
/// one per value: a million values cost nothing to check (16 MB before).
#[test]
fn checking_nesting_takes_no_memory_per_value() {
    let msg = call(Value::Array(vec![
        Value::Array(vec![Value::Null]);
        1_000_000
    ]));
    let (checked, peak) = peak_of(|| validate_client(&msg));
    assert!(checked.is_ok());
    assert!(peak < 64 * 1024, "{peak} bytes");
}
