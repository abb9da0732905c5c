//! How close the engine's token estimate (used for the `tpm` budget and context-window checks)
//! comes to OpenAI's own tokenizers on English text.
//! `cargo test --test tokens -- --nocapture` prints the measured error.

use switchyard::protocol::request::estimate_text_tokens;

/// Plain English prose of the kind prompts are made of: instructions, questions, support tickets.
const PROSE: &[&str] = &[
    "Multi-provider LLM architecture is an infrastructure pattern where an application routes AI requests across multiple language model providers through a single proxy layer, enabling automatic failover, cost-based routing, and model swaps without code changes.",
    "Hello, I ordered a pair of running shoes on the fourth of March and they still have not arrived. The tracking page says the parcel left the warehouse a week ago. Could you tell me where it is and whether I can get a refund if it is lost?",
    "You are a helpful travel assistant. Answer briefly and in a friendly tone. When the user asks for an itinerary, suggest one museum and one viewpoint per day, and mention how to get there by public transport.",
    "Summarise the following meeting notes in five bullet points, keeping the names of the people who took on each action and the dates they promised.",
    "The circuit breaker stops cascading failures. When an external service starts returning errors consistently, the breaker opens and blocks outgoing requests; after a cooling period it lets a single probe through, and closes again if that probe succeeds.",
    "Please extract the invoice number, the issue date, the total amount with its currency, and the supplier's name and address from the text below, and answer with a JSON object only.",
    "Our quarterly revenue grew by twelve percent, driven mostly by the new subscription plans in Europe, while churn stayed flat. Marketing spend was slightly above budget because of the spring campaign.",
    "Write a short, polite reply to a customer who wants to change the delivery address of an order that has already shipped, explaining what we can and cannot do.",
];

fn error(estimate: u64, actual: usize) -> f64 {
    (estimate as f64 - actual as f64) / actual as f64
}

#[test]
fn the_estimate_is_within_ten_percent_of_openai_tokenizers_on_english_prose() {
    let o200k = tiktoken_rs::o200k_base().unwrap();
    let cl100k = tiktoken_rs::cl100k_base().unwrap();
    let (mut est, mut n_o200k, mut n_cl100k, mut worst) = (0u64, 0usize, 0usize, 0f64);
    for text in PROSE {
        let e = estimate_text_tokens(text);
        let a = o200k.encode_ordinary(text).len();
        let b = cl100k.encode_ordinary(text).len();
        worst = worst.max(error(e, a).abs()).max(error(e, b).abs());
        est += e;
        n_o200k += a;
        n_cl100k += b;
    }
    let (eo, ec) = (error(est, n_o200k), error(est, n_cl100k));
    println!(
        "English prose, {} texts: estimate {est} tokens, o200k {n_o200k} ({:+.1} %), cl100k {n_cl100k} ({:+.1} %), worst single text {:.1} %",
        PROSE.len(),
        eo * 100.0,
        ec * 100.0,
        worst * 100.0
    );
    assert!(
        eo.abs() < 0.10 && ec.abs() < 0.10,
        "aggregate error {eo:.3} / {ec:.3}"
    );
    assert!(worst < 0.25, "worst single text {worst:.3}");
}

#[test]
fn on_markdown_the_estimate_is_close_too() {
    // The README: headings, tables, code. The estimate should not undercount what a tpm
    // budget must reserve by much.
    let text = include_str!("../README.md");
    let e = estimate_text_tokens(text);
    let a = tiktoken_rs::o200k_base()
        .unwrap()
        .encode_ordinary(text)
        .len();
    println!(
        "README.md: estimate {e}, o200k {a} ({:+.1} %)",
        error(e, a) * 100.0
    );
    assert!(
        error(e, a).abs() < 0.10,
        "off by {:.1} %",
        error(e, a) * 100.0
    );
}
