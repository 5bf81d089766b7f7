//! The internal server every scenario calls: `/small` a short JSON answer, `/bytes/N`
//! N zero bytes streamed, `/sink` reads the request body and answers its length.

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// Serves until `shutdown`; the address it listens on.
pub async fn fast_server(shutdown: CancellationToken) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn answer(request: Request<Incoming>) -> Result<Response<AnyBody>, std::convert::Infallible> {
    let path = request.uri().path().to_owned();
    let body: AnyBody = if let Some(n) = path
        .rsplit_once("/bytes/")
        .and_then(|(_, n)| n.parse::<u64>().ok())
    {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let chunks = n.div_ceil(chunk.len() as u64);
        let last = n - (chunks.saturating_sub(1)) * chunk.len() as u64;
        let stream = futures_util::stream::iter((0..chunks).map(move |i| {
            let part = if i + 1 == chunks {
                chunk.slice(..last as usize)
            } else {
                chunk.clone()
            };
            Ok::<_, std::io::Error>(Frame::data(part))
        }));
        BodyExt::boxed(StreamBody::new(stream))
    } else if path.ends_with("/sink") {
        let mut body = request.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Full::new(Bytes::from(format!("{{\"received\":{n}}}")))
            .map_err(|e| match e {})
            .boxed()
    } else {
        Full::new(Bytes::from_static(b"{\"ok\":true,\"items\":[1,2,3]}"))
            .map_err(|e| match e {})
            .boxed()
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(n) = path
        .rsplit_once("/bytes/")
        .and_then(|(_, n)| n.parse::<u64>().ok())
    {
        response
            .headers_mut()
            .insert("content-length", http::HeaderValue::from(n));
    }
    Ok(response)
}
