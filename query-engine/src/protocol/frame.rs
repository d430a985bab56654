//! Length-delimited framing: each frame is a 4-byte big-endian payload length followed by that
//! many bytes of MessagePack. The reader checks the length against a limit before it allocates,
//! so a hostile peer cannot make it reserve more than `max_bytes`.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted unless the server announces otherwise in `Connected`.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than allowed; the connection should be closed since
    /// the stream cannot be resynchronised without reading the payload.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    /// The stream ended inside a length prefix or payload.
    #[error("stream ended in the middle of a frame")]
    UnexpectedEof,
    #[error("i/o error on frame stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before a length prefix.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::UnexpectedEof)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len > max_bytes {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: max_bytes,
        });
    }
    let mut payload = vec![0u8; len as usize];
    match r.read_exact(&mut payload).await {
        Ok(_) => Ok(Some(payload)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::UnexpectedEof),
        Err(e) => Err(e.into()),
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let prefix = length_prefix(payload)?;
    w.write_all(&prefix).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// A frame as one buffer (prefix then payload), for transports that send whole datagrams or
/// for tests.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let prefix = length_prefix(payload)?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(out)
}

fn length_prefix(payload: &[u8]) -> Result<[u8; LENGTH_PREFIX_BYTES], FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len() as u64,
        max: u32::MAX,
    })?;
    Ok(len.to_be_bytes())
}

/// Whether `buf` starts with a complete frame. A length prefix over `max_bytes` is an error as
/// soon as the prefix is visible, before any of its payload has been buffered.
pub fn frame_ready(buf: &[u8], max_bytes: u32) -> Result<bool, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(false);
    };
    let len = u32::from_be_bytes(*prefix);
    if len > max_bytes {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: max_bytes,
        });
    }
    Ok(buf.len() >= LENGTH_PREFIX_BYTES + len as usize)
}

/// Takes the first complete frame's payload off the front of `buf` (without copying it),
/// leaving anything after it, or a partial frame, in place.
pub fn take_frame(buf: &mut BytesMut, max_bytes: u32) -> Result<Option<BytesMut>, FrameError> {
    if !frame_ready(buf, max_bytes)? {
        return Ok(None);
    }
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    prefix.copy_from_slice(&buf[..LENGTH_PREFIX_BYTES]);
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(u32::from_be_bytes(prefix) as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("test runtime")
            .block_on(f)
    }

    async fn read_all(mut bytes: &[u8], max: u32) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = read_frame(&mut bytes, max).await? {
            assert!(frame.len() <= max as usize);
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn write_then_read_roundtrip() {
        block_on(async {
            let mut wire = Vec::new();
            for payload in [&b"hello"[..], b"", &[7u8; 1000]] {
                write_frame(&mut wire, payload).await.expect("write");
            }
            let frames = read_all(&wire, 1000).await.expect("read");
            assert_eq!(frames, vec![b"hello".to_vec(), vec![], vec![7u8; 1000]]);
        });
    }

    #[test]
    fn clean_eof_is_none_and_partial_is_error() {
        block_on(async {
            let mut empty: &[u8] = &[];
            assert!(read_frame(&mut empty, 10).await.expect("eof").is_none());
            let mut half_prefix: &[u8] = &[0, 0];
            assert!(matches!(
                read_frame(&mut half_prefix, 10).await,
                Err(FrameError::UnexpectedEof)
            ));
            let mut short_payload: &[u8] = &[0, 0, 0, 5, 1, 2];
            assert!(matches!(
                read_frame(&mut short_payload, 10).await,
                Err(FrameError::UnexpectedEof)
            ));
        });
    }

    #[test]
    fn oversize_frame_is_rejected_before_reading_payload() {
        block_on(async {
            // Claims 4 GiB and carries nothing: must fail at once, not wait or allocate.
            let mut wire: &[u8] = &[0xff, 0xff, 0xff, 0xff];
            match read_frame(&mut wire, DEFAULT_MAX_FRAME_BYTES).await {
                Err(FrameError::TooLarge { len, max }) => {
                    assert_eq!(len, u32::MAX as u64);
                    assert_eq!(max, DEFAULT_MAX_FRAME_BYTES);
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
        });
    }

    #[test]
    fn incremental_decoder_keeps_partial_frames() {
        let mut wire = encode_frame(b"abc").expect("encode");
        wire.extend(encode_frame(b"defg").expect("encode"));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            got.extend(take_all(&mut buf, 16).expect("decode"));
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"defg".to_vec()]);
        assert!(buf.is_empty());
        let mut big = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert!(matches!(
            take_frame(&mut big, 16),
            Err(FrameError::TooLarge { len: 256, max: 16 })
        ));
    }

    fn take_all(buf: &mut BytesMut, max: u32) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = take_frame(buf, max)? {
            frames.push(frame.to_vec());
        }
        Ok(frames)
    }

    /// Valid frames, then damaged: bit flips, truncation, a rewritten length prefix.
    fn damaged_wire() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6),
            prop::collection::vec((any::<usize>(), 0u8..8), 0..4),
            any::<Option<usize>>(),
            any::<Option<(usize, u32)>>(),
        )
            .prop_map(|(payloads, flips, truncate, relength)| {
                let mut wire = Vec::new();
                for p in &payloads {
                    wire.extend(encode_frame(p).unwrap_or_default());
                }
                if !wire.is_empty() {
                    for (at, bit) in flips {
                        let at = at % wire.len();
                        wire[at] ^= 1 << bit;
                    }
                    if let Some((at, len)) = relength {
                        let at = at % wire.len();
                        let end = (at + 4).min(wire.len());
                        let bytes = len.to_be_bytes();
                        wire[at..end].copy_from_slice(&bytes[..end - at]);
                    }
                    if let Some(t) = truncate {
                        wire.truncate(t % (wire.len() + 1));
                    }
                }
                wire
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn reader_never_panics_or_overallocates(
            wire in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), damaged_wire()],
            max in 0u32..128,
        ) {
            let streamed = block_on(read_all(&wire, max));
            let mut buf = BytesMut::from(&wire[..]);
            let incremental = take_all(&mut buf, max);
            if let Ok(frames) = &incremental {
                prop_assert!(frames.iter().all(|f| f.len() <= max as usize));
            }
            // The two readers agree: the incremental decoder yields the same frames, and what
            // it leaves over is exactly what makes the stream reader hit a mid-frame EOF.
            match (streamed, incremental) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert!(buf.is_empty());
                }
                (Err(FrameError::UnexpectedEof), Ok(_)) => prop_assert!(!buf.is_empty()),
                (Err(FrameError::TooLarge { .. }), Err(FrameError::TooLarge { .. })) => {}
                (a, b) => prop_assert!(false, "readers disagree: {:?} vs {:?}", a, b),
            }
        }
    }
}
