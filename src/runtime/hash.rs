//! Short, stable names and seeds from long strings (supervisor names, pod uid seeds).

/// 64-bit FNV-1a: short, stable names from long paths.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
