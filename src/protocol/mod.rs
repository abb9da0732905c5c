//! What callers see on the wire: the OpenAI-shaped request and reply, the `Llm-*` headers, error
//! kinds and subject names. No routing logic lives here.

pub mod circuit;
pub mod embed;
pub mod error;
pub mod headers;
pub mod reply;
pub mod request;
pub mod response;
pub mod subjects;

pub use circuit::CircuitState;
pub use embed::{EmbedInput, EmbedRequest, Encoding};
pub use error::{AttemptRecord, ErrorBody, ErrorDetail, ErrorKind};
pub use headers::RequestOptions;
pub use reply::Reply;
pub use request::{ChatRequest, InvalidRequest};
pub use response::{ChatCompletion, Usage};
pub use subjects::{Endpoints, Subjects};
