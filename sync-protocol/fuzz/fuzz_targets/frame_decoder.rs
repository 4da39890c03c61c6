//! Fuzz target: the frame decoder never panics, and whatever it accepts re-encodes to the
//! same bytes. Run with `cargo fuzz run frame_decoder` from `sync-protocol/` (see
//! `docs/protocol.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_protocol::wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    // Feed in two pieces, as a network would.
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    decoder.feed(&data[..cut]);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = decoder.next_frame() {
        frames.push(f);
    }
    decoder.feed(&data[cut..]);
    while let Ok(Some(f)) = decoder.next_frame() {
        frames.push(f);
    }
    for f in frames {
        let bytes = f.to_bytes();
        let mut again = FrameDecoder::new();
        again.feed(&bytes);
        assert_eq!(again.next_frame().ok().flatten().as_ref(), Some(&f));
    }
});
