//! Request bodies that can be sent twice: a small body is read into memory first so
//! that a call refused with 401 can be retried with a new token; larger ones stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyDataStream, BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};

use postern_protocol::upload_progress::{Progress, Tracked};

/// Bodies up to this size are kept for a retry.
pub const REPLAY_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Body(#[from] hyper::Error),
    #[error("no piece of the request body within the connection's timeout")]
    Stalled,
    /// Past the connection's `max_request_body`, before anything was sent.
    #[error("the request body is larger than the connection allows")]
    TooLarge,
}

pub enum RequestBody {
    /// The whole body, in memory: can be sent again.
    Buffered(Bytes),
    /// What was read before the limit, then the rest of the stream: sent once only.
    Streaming { prefix: Bytes, rest: Incoming },
}

impl RequestBody {
    /// Streams without reading anything first.
    pub fn stream(body: Incoming) -> Self {
        RequestBody::Streaming {
            prefix: Bytes::new(),
            rest: body,
        }
    }

    /// Reads up to `REPLAY_LIMIT` bytes; a body announced as larger is not read at all. A
    /// caller that sends no piece for `stall` (the connection's timeout) is given up on,
    /// as a streamed upload is; one that passes `max_body` is refused.
    pub async fn read_small(
        headers: &HeaderMap,
        mut body: Incoming,
        stall: Duration,
        max_body: u64,
    ) -> Result<Self, ReadError> {
        let announced = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > REPLAY_LIMIT as u64) {
            return Ok(Self::stream(body));
        }
        let mut buffer = BytesMut::new();
        loop {
            let frame = tokio::time::timeout(stall, body.frame())
                .await
                .map_err(|_| ReadError::Stalled)?;
            let Some(frame) = frame else { break };
            if let Ok(data) = frame?.into_data() {
                buffer.extend_from_slice(&data);
                if buffer.len() as u64 > max_body {
                    return Err(ReadError::TooLarge);
                }
                if buffer.len() > REPLAY_LIMIT {
                    return Ok(RequestBody::Streaming {
                        prefix: buffer.freeze(),
                        rest: body,
                    });
                }
            }
        }
        Ok(RequestBody::Buffered(buffer.freeze()))
    }

    /// The bytes to send again, if the whole body is in memory (or there is none).
    pub fn replayable(&self) -> Option<Bytes> {
        match self {
            RequestBody::Buffered(bytes) => Some(bytes.clone()),
            RequestBody::Streaming { prefix, rest }
                if prefix.is_empty() && hyper::body::Body::is_end_stream(rest) =>
            {
                Some(Bytes::new())
            }
            RequestBody::Streaming { .. } => None,
        }
    }

    /// A streamed body notes its pieces in `progress`, and breaks off with a
    /// [`http_body_util::LengthLimitError`] past `max_body` (a chunked one: a declared
    /// length was checked before). One in memory (at most `REPLAY_LIMIT`, checked when
    /// read) goes out at once, so the timeout simply counts from the start.
    pub fn into_reqwest(self, progress: &Arc<Progress>, max_body: u64) -> reqwest::Body {
        let max_body = usize::try_from(max_body).unwrap_or(usize::MAX);
        match self {
            RequestBody::Buffered(bytes) => reqwest::Body::from(bytes),
            // The body itself, so that its length and its end (a bodiless call's is at
            // once) go with it: a stream of unknown length would go out chunked.
            RequestBody::Streaming { prefix, rest } if prefix.is_empty() => {
                reqwest::Body::wrap(Tracked::new(Limited::new(rest, max_body), progress))
            }
            RequestBody::Streaming { prefix, rest } => {
                let head = futures_util::stream::iter([Ok::<_, hyper::Error>(prefix)]);
                let pieces = head.chain(BodyDataStream::new(rest)).map_ok(Frame::data);
                let body = Limited::new(StreamBody::new(pieces), max_body);
                reqwest::Body::wrap(Tracked::new(body, progress))
            }
        }
    }
}
