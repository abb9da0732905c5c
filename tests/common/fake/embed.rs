//! What the fakes' embeddings endpoints share (OpenAI's `POST /v1/embeddings`, Gemini's
//! `:batchEmbedContents`): the deterministic vectors they answer with, what a request asks for as
//! its dialect reads it, and the success as both dialects render it.
//!
//! A vector is a unit vector drawn from a hash of its input alone (the model is left out, so that
//! two fakes agree), so a test can compute what it expects with [`vector`]. A token-array input is
//! hashed as its JSON text (`[1,2,3]`).

use serde_json::Value;

/// How many numbers a vector has when the request names no `dimensions` /
/// `outputDimensionality`, unless [`super::FakeProvider::set_embed_dimensions`] says otherwise.
pub const DEFAULT_DIMENSIONS: usize = 16;

/// The unit vector of `dims` numbers the fakes answer for `input`.
pub fn vector(input: &str, dims: usize) -> Vec<f32> {
    // FNV-1a, then xorshift64*: the same in every run and build.
    let mut state = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let v: Vec<f64> = (0..dims)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            bits as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    v.into_iter().map(|x| (x / norm) as f32).collect()
}

/// One input of an embeddings request: the text (or token array as JSON) its vector is drawn
/// from, and the length asked for, if any.
pub(super) struct Input {
    pub key: String,
    pub dimensions: Option<usize>,
}

/// A rough token count, as the fakes report usage: a quarter of the characters, at least one.
pub(super) fn tokens(key: &str) -> u32 {
    u32::try_from(key.chars().count().div_ceil(4).max(1)).unwrap_or(u32::MAX)
}

/// What a success carries, for the dialect to render.
pub(super) struct Reply<'a> {
    pub model: &'a str,
    /// `(index, vector)` in the order they are sent (shuffled when asked).
    pub items: Vec<(usize, Vec<f32>)>,
    pub prompt_tokens: u32,
    /// OpenAI `encoding_format: "base64"`: each vector as base64 of little-endian float32s.
    pub base64: bool,
}

/// A vector as JSON: an array of numbers (each the exact `f32`), or its base64 text.
pub(super) fn encode(v: &[f32], base64: bool) -> Value {
    if base64 {
        use base64::Engine as _;
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
    } else {
        Value::Array(v.iter().map(|x| Value::from(f64::from(*x))).collect())
    }
}
