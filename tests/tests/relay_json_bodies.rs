//! `POST /v1/agents/{agent}/token` takes its body as the other JSON routes do: a body
//! without a JSON content type is 400 `bad_request` (and changes nothing), one past the
//! limit 413 `payload_too_large` on every route. No body at all still means no options.
//! A 413 says `connection: close`, and the relay takes the rest of the upload as it closes.

use anyhow::Result;
use postern_tests::harness::Bins;
use postern_tests::relay_support::{RelayWorld, error_code, ssh_login};

fn bins() -> Bins {
    postern_tests::bins!()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_route_takes_json_as_the_others_do() -> Result<()> {
    let w = RelayWorld::start(bins()).await?;
    let token = w.create_agent("site").await?;
    let post = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = w
            .admin
            .http
            .post(format!("{}{path}", w.admin.base))
            .bearer_auth(&w.admin.key)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let json: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::Ok((status, json))
        }
    };
    let rotate = "/v1/agents/site/token";
    let grace = br#"{"grace":"5m"}"#.to_vec();

    let (status, json) = post(rotate, Some("text/plain"), grace.clone()).await?;
    assert_eq!((status, error_code(&json)), (400, "bad_request"), "{json}");
    let (status, json) = post(rotate, None, grace.clone()).await?;
    assert_eq!((status, error_code(&json)), (400, "bad_request"), "{json}");
    // Refused, so nothing changed: the first token still logs in.
    assert!(
        ssh_login(w.relay.ssh, &token).await?.1,
        "the token was rotated"
    );

    let big = {
        let mut body = br#"{"name":""#.to_vec();
        body.resize(3 * 1024 * 1024, b'a');
        body.extend_from_slice(br#""}"#);
        body
    };
    for path in [rotate, "/v1/agents", "/v1/apikeys"] {
        let (status, json) = post(path, Some("application/json"), big.clone()).await?;
        assert_eq!(
            (status, error_code(&json)),
            (413, "payload_too_large"),
            "{path}: {json}"
        );
        assert_eq!(
            json["error"]["message"],
            "the request body is larger than the 2 MiB the management API takes",
            "{path}: the limit in words"
        );
    }

    let (status, json) = post(rotate, Some("application/json"), grace).await?;
    assert_eq!(status, 200, "{json}");
    assert!(json["old_token_valid_until"].is_string(), "{json}");
    for content_type in [None, Some("text/plain")] {
        let (status, json) = post(rotate, content_type, Vec::new()).await?;
        assert_eq!(status, 200, "no body: {json}");
        assert!(json["old_token_valid_until"].is_null(), "{json}");
    }
    Ok(())
}

/// A client that sends its whole oversized body before it reads gets the 413 the relay
/// answered part way, and its upload is not reset: the relay closes by stopping its
/// writes and reading the rest for a moment (a socket closed with unread bytes resets
/// the connection, and a client still sending then fails before it reads the answer).
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_refused_part_way_gets_its_413_not_a_reset() -> Result<()> {
    use std::io::{Read, Write};
    let w = RelayWorld::start(bins()).await?;
    let mut client = std::net::TcpStream::connect(w.relay.api)?;
    let body = {
        // Far more than the socket buffers hold, so the relay closes while it comes.
        let mut body = br#"{"name":""#.to_vec();
        body.resize(32 * 1024 * 1024, b'a');
        body.extend_from_slice(br#""}"#);
        body
    };
    let head = format!(
        "POST /v1/agents HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        w.admin.key,
        body.len()
    );
    let mut writer = client.try_clone()?;
    let sending = std::thread::spawn(move || {
        writer.write_all(head.as_bytes())?;
        writer.write_all(&body)
    });
    // Read only once the relay has answered and closed.
    std::thread::sleep(std::time::Duration::from_secs(1));
    client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut answer = Vec::new();
    let read = client.read_to_end(&mut answer);
    // A client such as hyper's gives up on the whole request when its upload is reset,
    // whatever answer had come: the rest of the body must be taken, not refused.
    let sent = sending
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?;
    anyhow::ensure!(sent.is_ok(), "the upload was reset: {sent:?}");
    let text = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 413"),
        "read {read:?}, got {:?}",
        text.chars().take(200).collect::<String>()
    );
    // Said, so a client does not send its next request into the closing connection.
    anyhow::ensure!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    Ok(())
}
