//! Byte-level mutations applied to well-formed inputs: bit flips, interesting values, length
//! lies, truncation, deletion, duplication, random bytes and dictionary tokens.

use rand::rngs::SmallRng;
use rand::Rng;

/// Bytes that often sit on boundaries.
const INTERESTING_BYTES: [u8; 9] = [0, 1, 0x7f, 0x80, 0xff, b'/', b'#', b'+', b'"'];
/// 16-bit values that often sit on boundaries (string lengths, packet ids).
const INTERESTING_U16: [u16; 6] = [0, 1, 0x7fff, 0x8000, 0xfffe, 0xffff];

/// Applies one to four random mutations to `data`; tokens from `dictionary` may be inserted.
pub fn mutate(rng: &mut SmallRng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    for _ in 0..rng.random_range(1..=4) {
        mutate_once(rng, data, dictionary);
    }
}

fn mutate_once(rng: &mut SmallRng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let at = rng.random_range(0..data.len());
    match rng.random_range(0..10) {
        0 => data[at] ^= 1 << rng.random_range(0..8),
        1 => data[at] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())],
        2 => data[at] = rng.random(),
        3 => {
            let value = INTERESTING_U16[rng.random_range(0..INTERESTING_U16.len())];
            let bytes = value.to_be_bytes();
            data[at] = bytes[0];
            if at + 1 < data.len() {
                data[at + 1] = bytes[1];
            }
        }
        4 => data.truncate(at),
        5 => {
            let end = rng.random_range(at..=data.len().min(at + 16));
            data.drain(at..end);
        }
        6 => {
            let end = rng.random_range(at..=data.len().min(at + 32));
            let copy = data[at..end].to_vec();
            let to = rng.random_range(0..=data.len());
            data.splice(to..to, copy);
        }
        7 => {
            let count = rng.random_range(1..=8);
            let random: Vec<u8> = (0..count).map(|_| rng.random()).collect();
            data.splice(at..at, random);
        }
        8 if !dictionary.is_empty() => {
            let token = dictionary[rng.random_range(0..dictionary.len())];
            data.splice(at..at, token.iter().copied());
        }
        _ if !dictionary.is_empty() => {
            let token = dictionary[rng.random_range(0..dictionary.len())];
            let end = rng.random_range(at..=data.len().min(at + token.len()));
            data.splice(at..end, token.iter().copied());
        }
        _ => data[at] = data[at].wrapping_add(rng.random_range(1..=3)),
    }
}

/// `count` random bytes.
pub fn random_bytes(rng: &mut SmallRng, count: usize) -> Vec<u8> {
    (0..count).map(|_| rng.random()).collect()
}

/// One of `choices`.
pub fn pick<'a, T: ?Sized>(rng: &mut SmallRng, choices: &[&'a T]) -> &'a T {
    choices[rng.random_range(0..choices.len())]
}
