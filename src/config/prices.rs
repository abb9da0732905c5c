//! Built-in list prices (USD per million tokens, input / output) for common models, used when a
//! deployment gives no `price`. A deployment's own `price` always wins: providers change prices,
//! and discounts, batch and cached-token rates are not modelled here.
//!
//! Sources: the multi-provider article our users start from (its cost table: DeepSeek-V3,
//! Mistral Medium 3, Gemini 2.5 Pro, GPT-4o, Claude Sonnet 4, Claude Opus 4) and the providers'
//! public pricing pages as last recorded on `TAKEN`. Check the pages before relying on a figure.

use super::Price;

/// When the figures below were taken.
pub const TAKEN: &str = "2025-11-01";

/// (model, input per Mtok, output per Mtok). Names are the providers' model ids without date
/// suffixes; `lookup` strips provider prefixes and dated snapshots before matching.
const TABLE: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-5", 1.25, 10.00),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("o3", 2.00, 8.00),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("gpt-3.5-turbo", 0.50, 1.50),
    // Anthropic
    ("claude-opus-4", 15.00, 75.00),
    ("claude-opus-4-1", 15.00, 75.00),
    ("claude-opus-4-5", 5.00, 25.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-sonnet-4-5", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-haiku", 0.25, 1.25),
    // Google
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-flash-lite", 0.10, 0.40),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-2.0-flash-lite", 0.075, 0.30),
    ("gemini-1.5-flash", 0.075, 0.30),
    ("gemini-1.5-pro", 1.25, 5.00),
    // DeepSeek (the article's figures for V3)
    ("deepseek-chat", 0.14, 0.28),
    ("deepseek-v3", 0.14, 0.28),
    ("deepseek-reasoner", 0.55, 2.19),
    // Mistral
    ("mistral-medium-3", 0.40, 2.00),
    ("mistral-medium", 0.40, 2.00),
    ("mistral-small", 0.10, 0.30),
    ("mistral-large", 2.00, 6.00),
    // Open models at common hosts (Groq list prices)
    ("llama-3.3-70b-versatile", 0.59, 0.79),
    ("llama-3.1-8b-instant", 0.05, 0.08),
];

/// The list price of `model`, if the table knows it.
pub fn lookup(model: &str) -> Option<Price> {
    let name = normalize(model);
    // The longest table name that is the whole name or a prefix of it ending at a `-`:
    // `gemini-2.5-flash-preview-05-20` is `gemini-2.5-flash`, not `gemini-2.5-flash-lite`.
    TABLE
        .iter()
        .filter(|(m, _, _)| {
            name == *m
                || name
                    .strip_prefix(m)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(m, _, _)| m.len())
        .map(|&(_, input, output)| Price {
            input_per_mtok: input,
            output_per_mtok: output,
        })
}

/// Lower case, no provider prefix (`openai/`, `models/`, ...), no `-latest`, no dated snapshot
/// (`-2024-08-06`, `-20241022`).
fn normalize(model: &str) -> String {
    let mut m = model.trim().to_ascii_lowercase();
    if let Some((_, rest)) = m.rsplit_once('/') {
        m = rest.to_string();
    }
    if let Some(rest) = m.strip_suffix("-latest") {
        m = rest.to_string();
    }
    let bytes = m.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    // -YYYY-MM-DD
    if m.len() > 11 {
        let tail = &bytes[m.len() - 11..];
        if tail[0] == b'-'
            && digits(&tail[1..5])
            && tail[5] == b'-'
            && digits(&tail[6..8])
            && tail[8] == b'-'
            && digits(&tail[9..11])
        {
            m.truncate(m.len() - 11);
            return m;
        }
    }
    // -YYYYMMDD
    if m.len() > 9 {
        let tail = &bytes[m.len() - 9..];
        if tail[0] == b'-' && digits(&tail[1..]) && tail[1] == b'2' {
            m.truncate(m.len() - 9);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(model: &str) -> Option<(f64, f64)> {
        lookup(model).map(|p| (p.input_per_mtok, p.output_per_mtok))
    }

    #[test]
    fn the_articles_figures() {
        assert_eq!(p("deepseek-chat"), Some((0.14, 0.28)));
        assert_eq!(p("mistral-medium-3"), Some((0.40, 2.00)));
        assert_eq!(p("gemini-2.5-pro"), Some((1.25, 10.00)));
        assert_eq!(p("gpt-4o"), Some((2.50, 10.00)));
        assert_eq!(p("claude-sonnet-4"), Some((3.00, 15.00)));
        assert_eq!(p("claude-opus-4"), Some((15.00, 75.00)));
    }

    #[test]
    fn snapshots_prefixes_and_previews_find_their_model() {
        assert_eq!(p("gpt-4o-2024-08-06"), Some((2.50, 10.00)));
        assert_eq!(p("gpt-4o-mini-2024-07-18"), Some((0.15, 0.60)));
        assert_eq!(p("openai/gpt-4o-mini"), Some((0.15, 0.60)));
        assert_eq!(p("claude-3-5-haiku-20241022"), Some((0.80, 4.00)));
        assert_eq!(p("claude-3-5-haiku-latest"), Some((0.80, 4.00)));
        assert_eq!(p("models/gemini-2.0-flash-001"), Some((0.10, 0.40)));
        assert_eq!(p("gemini-2.5-flash-preview-05-20"), Some((0.30, 2.50)));
        assert_eq!(p("gemini-2.5-flash-lite"), Some((0.10, 0.40)));
        assert_eq!(p("Claude-Sonnet-4-20250514"), Some((3.00, 15.00)));
        assert_eq!(p("llama3.2"), None);
        assert_eq!(p("gpt-4"), None, "no prefix match without a dash boundary");
    }
}
