//! What decoding a client message allocates, measured by this test binary's own global
//! allocator, which counts the bytes each thread has allocated and the most it held at once:
//! a hostile message is refused having allocated little or, at worst, about the bound on a
//! message's decoded size (`MAX_DECODED_MESSAGE_BYTES`), where it took gigabytes; lengths it
//! claims reserve nothing; and checking its nesting takes no memory per value.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use query_engine::protocol::messages::MAX_DECODED_MESSAGE_BYTES;
use query_engine::protocol::{
    decode_call, decode_client, encode, validate_client, CallKind, ClientMessage, ProtocolError,
    DEFAULT_MAX_FRAME_BYTES,
};
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

const MIB: usize = 1 << 20;

/// A value standing for `args`, replaced by raw bytes in the encoded message.
const HOLE: &str = "\u{1}hole\u{1}";

/// A `Call` (which the server reads directly) and a `Subscribe` (read through serde) whose
/// `args` are `raw`, any MessagePack at all.
fn messages_with_args(raw: &[u8]) -> [Vec<u8>; 2] {
    let hole = Value::from(HOLE);
    let hole_bytes = rmp_serde::to_vec_named(&hole).unwrap();
    [
        call(hole.clone()),
        ClientMessage::Subscribe {
            query_id: 1,
            function: "f".into(),
            args: hole,
        },
    ]
    .map(|msg| {
        let bytes = encode(&msg).unwrap();
        let at = bytes
            .windows(hole_bytes.len())
            .position(|w| w == hole_bytes)
            .unwrap();
        [&bytes[..at], raw, &bytes[at + hole_bytes.len()..]].concat()
    })
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

/// An array32 of as many copies of `item` as an 8 MiB frame holds, with room for the message.
fn frame_of(item: &[u8]) -> Vec<u8> {
    let n = (DEFAULT_MAX_FRAME_BYTES as usize - 100) / item.len();
    let mut raw = vec![0xdd];
    raw.extend(u32::try_from(n).unwrap().to_be_bytes());
    raw.extend(item.repeat(n));
    raw
}

fn refused_as_too_large(decoded: Result<ClientMessage, ProtocolError>) -> bool {
    matches!(decoded, Err(ProtocolError::DecodedTooLarge { .. }))
}

/// 8 MiB of empty objects (a byte each, about 80 bytes each decoded: 700 MB before) is
/// refused at its length, the array's slots alone taking the bound, having built next to
/// nothing, directly and through the serde path.
#[test]
fn a_frame_of_empty_objects_is_refused_before_it_is_built() {
    for bytes in messages_with_args(&frame_of(&[0x80])) {
        for decode in [decode_call, decode_client] {
            let (decoded, peak) = peak_of(|| decode(&bytes));
            assert!(peak < MIB, "{peak} bytes");
            assert!(refused_as_too_large(decoded));
        }
    }
}

/// 8 MiB of one-entry objects (three bytes each, about 700 decoded: 1.9 GB before) is built
/// only until the estimate reaches the bound, and the estimate holds what was allocated
/// within it; the serde path checks it before building anything.
#[test]
fn a_frame_of_one_entry_objects_stops_at_the_bound() {
    let [call, subscribe] = messages_with_args(&frame_of(&[0x81, 0xa0, 0xc0]));
    let (decoded, peak) = peak_of(|| decode_call(&call));
    assert!(peak <= MAX_DECODED_MESSAGE_BYTES, "{} MiB", peak / MIB);
    assert!(refused_as_too_large(decoded));
    let (decoded, peak) = peak_of(|| decode_client(&subscribe));
    assert!(peak < MIB, "{peak} bytes");
    assert!(refused_as_too_large(decoded));
}

/// A `Connect` frame whose last field is 127 nested arrays each claiming 4 G elements, with
/// nothing after them, is refused without reserving room for any: serde reserved up to 1 MiB
/// for each (127 MiB).
#[test]
fn claimed_lengths_reserve_nothing() {
    let mut bytes = encode(&ClientMessage::Connect {
        protocol_version: 1,
        client_name: String::new(),
        last_seen_ts: None,
        transition_parts: false,
    })
    .unwrap();
    assert_eq!(bytes.pop(), Some(0xc0), "lastSeenTs is the last field");
    bytes.extend([0xdd, 0xff, 0xff, 0xff, 0xff].repeat(127));
    assert!(bytes.len() < 1024);
    for decode in [decode_call, decode_client] {
        let (decoded, peak) = peak_of(|| decode(&bytes));
        assert!(peak < 64 * 1024, "{peak} bytes");
        assert!(matches!(decoded, Err(ProtocolError::NotMessagePack)));
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
