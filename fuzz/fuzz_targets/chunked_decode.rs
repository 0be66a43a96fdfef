//! Fuzz the chunked decoder: the same input fed whole and split at every
//! position the first byte picks must give the same outcome and body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::limits::Limits;

fn run(input: &[u8], split: usize, limits: &Limits) -> Result<(usize, Vec<u8>), ()> {
    let mut dec = ChunkedDecoder::new(limits);
    let mut out = Vec::new();
    let split = split.min(input.len());
    let first = dec.decode(&input[..split], &mut out).map_err(|_| ())?;
    if first.done {
        return Ok((first.consumed, out));
    }
    // The caller keeps unconsumed bytes and appends new ones after them.
    let rest = &input[first.consumed..];
    let second = dec.decode(rest, &mut out).map_err(|_| ())?;
    if second.done {
        Ok((first.consumed + second.consumed, out))
    } else {
        Err(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_body_bytes: 4096,
        max_chunk_ext_bytes: 64,
        max_trailer_bytes: 256,
        ..Limits::default()
    };
    let whole = run(input, input.len(), &limits);
    let parts = run(input, usize::from(split), &limits);
    if let (Ok(a), Ok(b)) = (&whole, &parts) {
        assert_eq!(a, b, "split decoding must agree with whole decoding");
    }
});
