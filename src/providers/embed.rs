//! PROVISIONAL (replaced by the `embedp` branch): the embeddings call types.

use crate::protocol::EmbedInput;

pub struct EmbedCall<'a> {
    pub inputs: &'a [EmbedInput],
    pub dimensions: Option<u32>,
    pub user: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
    pub model: String,
    pub cost_usd: f64,
}

impl super::Adapter {
    pub async fn embed(
        &self,
        call: &EmbedCall<'_>,
        _fate: Option<super::simulated::Fate>,
    ) -> Result<Embedded, super::Failure> {
        let d = &self.config;
        let Some(spec) = &d.embedding else {
            return Err(super::Failure::Untranslatable(
                "not an embedding deployment".into(),
            ));
        };
        let dims = call.dimensions.unwrap_or(spec.dimensions) as usize;
        let vectors = call
            .inputs
            .iter()
            .map(|i| {
                let h = crate::config::stable_hash(format!("{i:?}").as_bytes());
                (0..dims)
                    .map(|k| ((h.wrapping_add(k as u64) % 1000) as f32) / 1000.0)
                    .collect()
            })
            .collect();
        let prompt_tokens = call.inputs.iter().map(EmbedInput::estimated_tokens).sum();
        Ok(Embedded {
            vectors,
            prompt_tokens,
            model: d.model.clone(),
            cost_usd: d.price.cost(prompt_tokens, 0),
        })
    }
}
