//! What the HTTP sources (polling, hawkBit) share: a client that follows redirects only on the
//! configured server's origin, and bodies read with a cap, refused as soon as they pass it.

use crate::agent::refused::ServerError;
use std::time::Duration;

/// Why a server's base URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} `{url}`: {cause}")]
pub struct BaseUrlError {
    pub setting: &'static str,
    pub url: String,
    pub cause: String,
}

/// A client for the server at `base_url` (named `setting` in errors): redirects are followed
/// only on its origin (scheme, host and port), at most 5 deep, so a compromised path cannot send
/// the agent elsewhere.
pub fn client(setting: &'static str, base_url: &str) -> Result<reqwest::Client, BaseUrlError> {
    let bad = |cause: String| BaseUrlError {
        setting,
        url: base_url.to_owned(),
        cause,
    };
    let url = reqwest::Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs are served".into()));
    }
    let origin = url.origin();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if attempt.url().origin() != origin {
            let to = attempt.url().to_string();
            attempt.error(format!("redirect to another server refused: {to}"))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(policy)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// An error with its causes (reqwest keeps the reason for a refused redirect in its source).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The body of `request`'s answer as text, refused as soon as it passes `limit` bytes (never
/// read whole first); `url` names it in errors.
pub async fn text_of(
    request: reqwest::RequestBuilder,
    url: &str,
    limit: usize,
) -> Result<String, ServerError> {
    let unreachable = |e: &dyn std::error::Error| ServerError::Unreachable {
        url: url.to_owned(),
        cause: describe(e),
    };
    let mut resp = request.send().await.map_err(|e| unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(ServerError::Status {
            url: url.to_owned(),
            status: resp.status().as_u16(),
        });
    }
    let too_large = || ServerError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ServerError::NotUtf8 {
        url: url.to_owned(),
    })
}

/// `GET url`, as [`text_of`].
pub async fn get_text(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<String, ServerError> {
    text_of(client.get(url), url, limit).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A loopback HTTP server answering its first few requests with `response`.
    pub(crate) fn serve(response: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(4) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(&response);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_redirect_to_another_server_is_refused() {
        let elsewhere = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv9".to_vec());
        let base = serve(
            format!("HTTP/1.1 302 Found\r\nLocation: {elsewhere}/proj/version\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        );
        let url = format!("{base}/proj/version");
        let err = get_text(&client("base-url", &base).unwrap(), &url, 4096)
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("redirect to another server refused"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_while_it_is_read() {
        // No Content-Length: the cap holds while streaming.
        let mut response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        response.extend(std::iter::repeat_n(b'v', 4097));
        let base = serve(response);
        let err = get_text(&client("base-url", &base).unwrap(), &base, 4096)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ServerError::TooLarge { limit: 4096, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_base_url_of_another_scheme_is_refused_naming_the_setting() {
        let e = client("[hawkbit] base-url", "ftp://x/").unwrap_err();
        assert_eq!(
            e.to_string(),
            "[hawkbit] base-url `ftp://x/`: only http and https URLs are served"
        );
    }
}
