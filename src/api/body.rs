//! Request bodies read as they arrive, against a limit known before the first byte: a body
//! whose `Content-Length` is over it is refused without reading it, and one that grows past it
//! is refused once the limit's bytes are in, so a client cannot make the node hold (or parse)
//! more than the limit, whatever it declares.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use futures::StreamExt;

use super::ApiError;

/// What a body may be at most, and why (for the refusal's message).
pub(crate) struct BodyLimit {
    pub bytes: usize,
    pub why: String,
}

fn too_large(limit: &BodyLimit) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than {} bytes: {}",
            limit.bytes, limit.why
        ),
    )
}

/// Reads `body` whole, refusing it as soon as it is known to exceed `limit`.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: &BodyLimit,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes as u64) {
        return Err(too_large(limit));
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if out.len() + chunk.len() > limit.bytes {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: usize) -> BodyLimit {
        BodyLimit {
            bytes,
            why: "test".into(),
        }
    }

    fn code(r: Result<Bytes, ApiError>) -> (u16, String) {
        match r {
            Ok(b) => (200, String::from_utf8_lossy(&b).into_owned()),
            Err(e) => (e.status.as_u16(), e.code.to_string()),
        }
    }

    #[tokio::test]
    async fn bodies_up_to_the_limit_are_read_and_longer_ones_refused() {
        let none = HeaderMap::new();
        let ok = read_limited(&none, Body::from("12345"), &limit(5)).await;
        assert_eq!(code(ok), (200, "12345".into()));
        let over = read_limited(&none, Body::from("123456"), &limit(5)).await;
        assert_eq!(code(over), (413, "payload_too_large".into()));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
        // A stream that fails if read: the refusal must come first.
        let unread = Body::from_stream(futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("read"))
        }));
        let r = read_limited(&headers, unread, &limit(10)).await;
        assert_eq!(code(r), (413, "payload_too_large".into()));
    }

    #[tokio::test]
    async fn a_stream_that_grows_past_the_limit_stops_being_read() {
        // An endless body: refused once the limit is passed, not read to its end.
        let endless = Body::from_stream(futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789"))
        }));
        let r = read_limited(&HeaderMap::new(), endless, &limit(1000)).await;
        assert_eq!(code(r), (413, "payload_too_large".into()));
    }
}
