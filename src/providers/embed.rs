//! Embeddings at one deployment (docs/contract.md §10): what one provider call is given
//! (`EmbedCall`, a slice of the caller's inputs), what a wire format reads out of the reply
//! (`Vectors`), and what the call returns once checked and priced (`Embedded`).
//!
//! `EmbedFormat` is a capability a wire format opts into beside `WireFormat` (OpenAI and Gemini
//! do; Anthropic has no embeddings API, which config refuses). Like `WireFormat` it is
//! translation only: `send.rs` sends, `Adapter::embed` checks what came back with `complete`, so
//! that every backend (the simulator too) is held to the same rules: one vector per input, each of
//! the expected length, every number finite.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::failure::Failure;
use super::shape::{MAX_TOKENS, snippet};
use crate::config::DeploymentConfig;
use crate::protocol::EmbedInput;

/// One provider call of an embeddings request: a slice of the caller's inputs.
pub struct EmbedCall<'a> {
    pub inputs: &'a [EmbedInput],
    /// The caller's `dimensions`, passed on (OpenAI `dimensions`, Gemini `outputDimensionality`);
    /// None: send none.
    pub dimensions: Option<u32>,
    pub user: Option<&'a str>,
}

/// What one call returned.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The provider's usage, else the inputs' estimate (Gemini reports none).
    pub prompt_tokens: u64,
    /// The served model: the provider's `model` field if it gives one, else the deployment's.
    pub model: String,
    /// `prompt_tokens` × `price.input_per_mtok` / 1e6.
    pub cost_usd: f64,
}

/// What a wire format read out of a 2xx embeddings reply, before `complete` checks it.
#[derive(Debug, Default)]
pub struct Vectors {
    /// In input order (a format that numbers its items has put them in place).
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: Option<u64>,
    pub model: Option<String>,
}

/// One provider's embeddings API, as translation only.
pub trait EmbedFormat: Send + Sync {
    /// The URL of an embeddings call, from the deployment's `api_base` and model.
    fn embed_endpoint(&self, d: &DeploymentConfig) -> String;

    /// The JSON body of `call`, with the deployment's `extra_body`. Inputs this API cannot take
    /// fail here with `Failure::Untranslatable`, before anything is sent.
    fn build_embed_body(
        &self,
        d: &DeploymentConfig,
        call: &EmbedCall<'_>,
    ) -> Result<Vec<u8>, Failure>;

    /// A 2xx body as vectors, or `Failure::InvalidBody` when it is not a reply of this API.
    fn parse_embed_reply(&self, body: &[u8]) -> Result<Vectors, Failure>;
}

/// The vector length `call` must get back: its `dimensions`, else the deployment's. A deployment
/// that is not `mode = "embedding"` takes no embeddings call.
pub fn expected_dimensions(d: &DeploymentConfig, call: &EmbedCall<'_>) -> Result<u32, Failure> {
    let spec = d.embedding.as_ref().ok_or_else(|| {
        Failure::Untranslatable(format!(
            "deployment `{}` is mode = \"{}\", not an embedding deployment",
            d.name,
            d.mode()
        ))
    })?;
    Ok(call.dimensions.unwrap_or(spec.dimensions))
}

/// The vector space a call's vectors live in: the deployment's `space`, or, when the request
/// names other `dimensions`, `"<model>@<dimensions>"` (contract §10; a space the config named
/// becomes `"<space>@<dimensions>"`, so two providers of one named space stay one).
pub fn space(d: &DeploymentConfig, dimensions: Option<u32>) -> String {
    let Some(spec) = &d.embedding else {
        return d.model.clone();
    };
    match dimensions {
        None => spec.space.clone(),
        Some(n) if n == spec.dimensions => spec.space.clone(),
        // The default space is the model's at its size: at another size, the model's at that.
        Some(n) if spec.space == format!("{}@{}", d.model, spec.dimensions) => {
            format!("{}@{n}", d.model)
        }
        // A space the config named keeps its name, at the size asked.
        Some(n) => format!("{}@{n}", spec.space),
    }
}

/// Checks what a backend returned against `call` and completes it: the count and every length
/// must match and every number be finite (else `InvalidBody`, which falls back like any garbage
/// body); usage is estimated where the provider gave none; the call is priced.
pub fn complete(
    d: &DeploymentConfig,
    call: &EmbedCall<'_>,
    dimensions: u32,
    got: Vectors,
) -> Result<Embedded, Failure> {
    if got.vectors.len() != call.inputs.len() {
        return Err(Failure::InvalidBody(format!(
            "{} vectors for {} inputs",
            got.vectors.len(),
            call.inputs.len()
        )));
    }
    for (i, v) in got.vectors.iter().enumerate() {
        if v.len() != dimensions as usize {
            return Err(Failure::InvalidBody(format!(
                "vector {i} has {} numbers, expected {dimensions}",
                v.len()
            )));
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(Failure::InvalidBody(format!(
                "vector {i} holds a number that is not finite"
            )));
        }
    }
    let prompt_tokens = match got.prompt_tokens {
        Some(n) if n > 0 => n,
        _ => estimated_tokens(call.inputs),
    }
    .min(MAX_TOKENS);
    Ok(Embedded {
        vectors: got.vectors,
        prompt_tokens,
        model: got
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| d.model.clone()),
        cost_usd: d.price.cost(prompt_tokens, 0),
    })
}

pub fn estimated_tokens(inputs: &[EmbedInput]) -> u64 {
    inputs
        .iter()
        .map(EmbedInput::estimated_tokens)
        .fold(0, u64::saturating_add)
}

/// The deployment's `extra_body` entries that go into an embeddings body beside the format's own,
/// which they override, except those in `kept` (the model and the inputs are never replaced).
pub(super) fn extra<'a>(
    d: &'a DeploymentConfig,
    kept: &'a [&str],
) -> impl Iterator<Item = (&'a String, &'a Value)> {
    d.extra_body
        .iter()
        .flat_map(Map::iter)
        .filter(|(k, _)| !kept.contains(&k.as_str()))
}

/// A 2xx body that is not the reply it should be, quoting its start.
pub(super) fn unreadable(e: serde_json::Error, body: &[u8]) -> Failure {
    Failure::InvalidBody(format!("{e} (body starts {:?})", snippet(body)))
}

/// Whether the deployment's `extra_body` replaces the format's own `key`.
pub(super) fn overridden(d: &DeploymentConfig, key: &str) -> bool {
    d.extra_body.as_ref().is_some_and(|m| m.contains_key(key))
}

/// One vector of a reply: a JSON array of numbers or, as OpenAI sends it for
/// `encoding_format: "base64"`, a string of little-endian float32s. Read straight into `f32`s,
/// without a `Value` in between (a reply carries millions of numbers).
pub(super) struct Vector(pub Vec<f32>);

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers or a base64 string")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vector, A::Error> {
                // The hint is the sender's: bounded so that it cannot make us reserve much.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(x) = seq.next_element::<f32>()? {
                    out.push(x);
                }
                Ok(Vector(out))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vector, E> {
                crate::protocol::embed::decode_base64(s)
                    .map(Vector)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An embedding deployment of `model` at `provider` returning `dimensions` numbers, priced
/// $0.02 per million tokens, for the adapter tests (read from config text, as a user writes it).
#[cfg(test)]
pub(super) fn test_deployment(
    provider: crate::config::ProviderKind,
    model: &str,
    dimensions: u32,
) -> DeploymentConfig {
    let text = format!(
        "[[deployments]]\nname = \"e\"\ngroup = \"embed\"\nprovider = \"{}\"\nmodel = \"{model}\"\n\
         mode = \"embedding\"\ndimensions = {dimensions}\nprice = {{ input_per_mtok = 0.02 }}\n",
        provider.as_str()
    );
    let mut c = crate::config::Config::parse(&text, "t.toml", &|_| None).unwrap();
    c.deployments.remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    fn deployment(dimensions: u32) -> DeploymentConfig {
        test_deployment(ProviderKind::OpenAi, "text-embedding-3-small", dimensions)
    }

    fn texts(t: &[&str]) -> Vec<EmbedInput> {
        t.iter().map(|s| EmbedInput::Text(s.to_string())).collect()
    }

    #[test]
    fn complete_checks_count_length_and_finiteness() {
        let d = deployment(2);
        let inputs = texts(&["a", "b"]);
        let call = EmbedCall {
            inputs: &inputs,
            dimensions: None,
            user: None,
        };
        let got = |vectors: Vec<Vec<f32>>| Vectors {
            vectors,
            prompt_tokens: Some(1_000_000),
            model: None,
        };
        let ok = complete(&d, &call, 2, got(vec![vec![1.0, 0.0], vec![0.0, 1.0]])).unwrap();
        assert_eq!(ok.model, "text-embedding-3-small");
        assert!((ok.cost_usd - 0.02).abs() < 1e-12);
        for (bad, says) in [
            (vec![vec![1.0, 0.0]], "1 vectors for 2 inputs"),
            (
                vec![vec![1.0, 0.0], vec![0.0, 1.0, 2.0]],
                "vector 1 has 3 numbers, expected 2",
            ),
            (vec![vec![1.0, f32::INFINITY], vec![0.0, 1.0]], "vector 0"),
            (vec![vec![1.0, 0.0], vec![f32::NAN, 1.0]], "not finite"),
        ] {
            match complete(&d, &call, 2, got(bad)) {
                Err(Failure::InvalidBody(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        // No usage from the provider: the inputs' estimate.
        let e = complete(
            &d,
            &call,
            2,
            Vectors {
                vectors: vec![vec![0.0; 2]; 2],
                ..Vectors::default()
            },
        )
        .unwrap();
        assert_eq!(e.prompt_tokens, estimated_tokens(&inputs));
    }

    #[test]
    fn chat_deployments_take_no_embeddings_call_and_spaces_follow_dimensions() {
        let call = EmbedCall {
            inputs: &[],
            dimensions: Some(256),
            user: None,
        };
        let mut d = deployment(1536);
        assert_eq!(expected_dimensions(&d, &call), Ok(256));
        assert_eq!(space(&d, None), "text-embedding-3-small@1536");
        assert_eq!(space(&d, Some(256)), "text-embedding-3-small@256");
        d.embedding = None;
        assert!(matches!(
            expected_dimensions(&d, &call),
            Err(Failure::Untranslatable(m)) if m.contains("mode = \"chat\"")
        ));
    }
}
