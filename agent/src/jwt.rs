//! JWT signing for `jwt_bearer` connections: payload templates, private key loading,
//! and the signer that turns both into a fresh compact token per call.

pub mod key;
pub mod signer;
pub mod template;

pub use signer::{Algorithm, JwtError, JwtSigner, KeyMaterial};
pub use template::{PayloadTemplate, TemplateError};
