//! JWT signing for `jwt_bearer` connections: payload templates, private key loading,
//! the signer, and the bearer source that reuses or exchanges tokens (RFC 7523).

pub mod bearer;
pub mod certificate;
pub mod encrypted_key;
pub mod exchange;
pub mod key;
pub mod recipe;
pub mod signer;
mod signing_key;
pub mod template;

pub use bearer::{Bearer, BearerError, BearerSource, CacheState};
pub use signer::{Algorithm, JwtError, JwtSigner, KeyMaterial};
pub use template::{PayloadTemplate, TemplateError};
