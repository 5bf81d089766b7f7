//! Request bodies of unknown length (chunked) reach the internal server whole on every
//! method, through the relay and the agent: hyper sends a GET's or a HEAD's as bodiless
//! unless told it is chunked, and both hops once dropped such a body without a word.

use anyhow::{Result, ensure};
use bytes::Bytes;
use postern_tests::harness::Tunnel;
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::temp::TempDir;
use reqwest::Method;

const SECRET: &str = "a shared secret of at least thirty-two bytes!";

/// Sends `len` bytes in pieces, with no Content-Length; answers the length the internal
/// server read.
async fn chunked(tunnel: &Tunnel, connection: &str, method: Method, len: usize) -> Result<u64> {
    let pieces = (0..len.div_ceil(8192))
        .map(move |i| Ok::<_, std::io::Error>(Bytes::from(vec![b'q'; (len - i * 8192).min(8192)])));
    let r = tunnel
        .api
        .http
        .request(
            method.clone(),
            format!(
                "{}/v1/agents/a1/connections/{connection}/http/search",
                tunnel.api.base
            ),
        )
        .bearer_auth(&tunnel.api.key)
        // reqwest's hyper, too, would send this GET bodiless if not told.
        .header("transfer-encoding", "chunked")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await?;
    ensure!(r.status() == 200, "{method} {connection}: {}", r.status());
    let answer: serde_json::Value = r.json().await?;
    answer["body_len"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no body_len in {answer}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_arrives_whole_on_every_method() -> Result<()> {
    let open = InternalServer::start(Verifier::None, "open").await?;
    let signed =
        InternalServer::start(Verifier::Hs256(SECRET.as_bytes().to_vec()), "signed").await?;
    let dir = TempDir::new("request-bodies")?;
    dir.write_private("hmac.secret", SECRET)?;
    // Unsigned calls stream their body; signed ones with a cached token (`reuse_for`:
    // every call but the first) read a small one first (for a retry with a new token)
    // and stream a larger one.
    let connections = format!(
        "[connections.open]\nbase_uri = \"{}\"\n\
         [connections.signed]\nbase_uri = \"{}\"\n\
         [connections.signed.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\n\
         secret_file = \"hmac.secret\"\nlifetime = \"5m\"\nreuse_for = \"4m\"\npayload = {{ aud = \"signed\" }}\n",
        open.base_uri(),
        signed.base_uri()
    );
    let tunnel = Tunnel::start(&postern_tests::bins!(), &dir, &connections).await?;
    for connection in ["open", "signed"] {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
            for len in [10, 200 * 1024] {
                let read = chunked(&tunnel, connection, method.clone(), len).await?;
                assert_eq!(read, len as u64, "{method} {connection} of {len} bytes");
            }
        }
    }
    Ok(())
}
