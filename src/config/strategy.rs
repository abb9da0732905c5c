//! The five routing strategies by name (docs/contract.md §4), as the config and the
//! `Llm-Strategy` header name them. How each orders candidates is `routing::strategy`.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Weighted random.
    #[default]
    SimpleShuffle,
    /// Fewest calls in flight.
    LeastBusy,
    /// Most `rpm`/`tpm` headroom left this minute.
    UsageBased,
    /// Lowest recent latency (EWMA): those within a buffer of the fastest form one tier and share
    /// the traffic by weight (a weighted shuffle); unmeasured ones first, slower ones after.
    LatencyBased,
    /// Cheapest for this request's estimated tokens.
    CostBased,
}

impl Strategy {
    pub const NAMES: [&str; 5] = [
        "simple-shuffle",
        "least-busy",
        "usage-based",
        "latency-based",
        "cost-based",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "simple-shuffle" => Ok(Self::SimpleShuffle),
            "least-busy" => Ok(Self::LeastBusy),
            "usage-based" | "usage-based-routing" => Ok(Self::UsageBased),
            "latency-based" | "latency-based-routing" => Ok(Self::LatencyBased),
            "cost-based" => Ok(Self::CostBased),
            other => Err(format!(
                "unknown strategy `{other}` ({})",
                Self::NAMES.join(" | ")
            )),
        }
    }
}
