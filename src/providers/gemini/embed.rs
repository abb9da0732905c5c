//! Gemini embeddings: `POST {api_base}/v1beta/models/{model}:batchEmbedContents`, one
//! `EmbedContentRequest` per input (each naming the model again, as the API wants), answered with
//! `{"embeddings": [{"values": [...]}]}` in request order. Gemini takes texts only, reports no
//! usage and names no model in the reply; `outputDimensionality` carries the caller's
//! `dimensions`. The deployment's `extra_body` goes into each request (`taskType`, `title`).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Gemini, model_id, model_url};
use crate::config::DeploymentConfig;
use crate::providers::embed::{self, EmbedCall, EmbedFormat, Vector, Vectors};
use crate::providers::failure::Failure;

/// Fields of each request that `extra_body` never replaces.
const KEPT: &[&str] = &["model", "content"];

impl EmbedFormat for Gemini {
    fn embed_endpoint(&self, d: &DeploymentConfig) -> String {
        model_url(&d.api_base, &d.model, "batchEmbedContents")
    }

    /// A `BatchEmbedContentsRequest`; token-id inputs are `Untranslatable`.
    fn build_embed_body(
        &self,
        d: &DeploymentConfig,
        call: &EmbedCall<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let model = format!("models/{}", model_id(&d.model));
        let requests = call
            .inputs
            .iter()
            .map(|input| {
                let text = input.text().ok_or_else(|| {
                    Failure::Untranslatable("token-id inputs (Gemini embeds text only)".into())
                })?;
                let mut r = Map::new();
                r.insert("model".into(), Value::from(model.as_str()));
                r.insert("content".into(), json!({"parts": [{"text": text}]}));
                if let Some(n) = call.dimensions {
                    r.insert("outputDimensionality".into(), Value::from(n));
                }
                for (k, v) in embed::extra(d, KEPT) {
                    r.insert(k.clone(), v.clone());
                }
                Ok(Value::Object(r))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        // Serializing JSON values into memory cannot fail.
        Ok(serde_json::to_vec(&json!({ "requests": requests })).unwrap_or_default())
    }

    fn parse_embed_reply(&self, body: &[u8]) -> Result<Vectors, Failure> {
        let batch: Batch = serde_json::from_slice(body).map_err(|e| embed::unreadable(e, body))?;
        Ok(Vectors {
            vectors: batch.embeddings.into_iter().map(|e| e.values.0).collect(),
            prompt_tokens: None,
            model: None,
        })
    }
}

#[derive(Deserialize)]
struct Batch {
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    values: Vector,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;
    use crate::protocol::EmbedInput;

    fn deployment() -> DeploymentConfig {
        embed::test_deployment(ProviderKind::Gemini, "models/text-embedding-004", 768)
    }

    #[test]
    fn batch_body_names_the_model_in_each_request_with_output_dimensionality() {
        let mut d = deployment();
        assert_eq!(
            Gemini.embed_endpoint(&d),
            format!(
                "{}/v1beta/models/text-embedding-004:batchEmbedContents",
                d.api_base
            )
        );
        let inputs = [EmbedInput::Text("a".into()), EmbedInput::Text("b".into())];
        let call = EmbedCall {
            inputs: &inputs,
            dimensions: None,
            user: Some("ignored"),
        };
        let body: Value =
            serde_json::from_slice(&Gemini.build_embed_body(&d, &call).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}},
            ]})
        );
        d.extra_body = Some(
            serde_json::from_str(r#"{"taskType":"RETRIEVAL_DOCUMENT","model":"x","content":{}}"#)
                .unwrap(),
        );
        let call = EmbedCall {
            dimensions: Some(256),
            ..call
        };
        let body: Value =
            serde_json::from_slice(&Gemini.build_embed_body(&d, &call).unwrap()).unwrap();
        assert_eq!(
            body["requests"][1],
            json!({
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "b"}]},
                "outputDimensionality": 256,
                "taskType": "RETRIEVAL_DOCUMENT",
            })
        );
    }

    #[test]
    fn token_inputs_are_refused_before_anything_is_sent() {
        let inputs = [EmbedInput::Text("a".into()), EmbedInput::Tokens(vec![1, 2])];
        let call = EmbedCall {
            inputs: &inputs,
            dimensions: None,
            user: None,
        };
        assert!(matches!(
            Gemini.build_embed_body(&deployment(), &call),
            Err(Failure::Untranslatable(m)) if m.contains("text only")
        ));
    }

    #[test]
    fn batch_reply_is_read_in_order() {
        let v = Gemini
            .parse_embed_reply(br#"{"embeddings":[{"values":[0.5,-0.25]},{"values":[1,0]}]}"#)
            .unwrap();
        assert_eq!(v.vectors, vec![vec![0.5, -0.25], vec![1.0, 0.0]]);
        assert_eq!((v.prompt_tokens, v.model), (None, None));
        for bad in [
            &br#"{"embeddings":[{"value":[1]}]}"#[..],
            br#"{"error":{"code":400}}"#,
            b"",
        ] {
            assert!(matches!(
                Gemini.parse_embed_reply(bad),
                Err(Failure::InvalidBody(_))
            ));
        }
    }
}
