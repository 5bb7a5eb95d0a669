//! The dashboard: the files `npm run build` writes to `frontend/dist`, embedded in release builds (read
//! from disk at run time in debug builds). Hashed assets are cached for a year; `index.html` is
//! revalidated so a new release is picked up. Each file has gzip and brotli copies made at build time,
//! served to clients that accept them.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "../frontend/dist"]
// A checkout where the dashboard was never built still compiles (and says so at `/`).
#[allow_missing = true]
struct Assets;

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Fast VM</title>\
<p>The dashboard has not been built: run <code>npm ci &amp;&amp; npm run build</code> in <code>frontend/</code> \
(<code>scripts/run.sh</code> does it). The API is at <a href=/docs/>/docs</a>.";

/// The encodings the client accepts that we keep copies in, best first.
fn encodings(headers: &HeaderMap) -> Vec<(&'static str, &'static str)> {
    let accepted = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let takes = |name: &str| {
        accepted.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|p| p.trim().replace(' ', "") == "q=0");
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    [("br", ".br"), ("gzip", ".gz")].into_iter().filter(|(name, _)| takes(name)).collect()
}

pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let asset = path.starts_with("assets/");
    // The dashboard routes in the URL's fragment, so its one page answers for any page path; API
    // paths and files that do not exist stay 404s.
    let page = !asset && !path.starts_with("api/") && !path.starts_with("ws/") && !path.contains('.');
    let path = match (asset, page || path == "index.html") {
        (true, _) => path,
        (false, true) => "index.html",
        (false, false) => return StatusCode::NOT_FOUND.into_response(),
    };
    let Some(plain) = Assets::get(path) else {
        return if asset {
            StatusCode::NOT_FOUND.into_response()
        } else {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], NOT_BUILT).into_response()
        };
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let (body, encoding) = encodings(&headers)
        .into_iter()
        .find_map(|(name, ext)| Assets::get(&format!("{path}{ext}")).map(|f| (f.data, Some(name))))
        .unwrap_or((plain.data, None));
    let cache = if asset { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut response = Body::from(body.into_owned()).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(name) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(name));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> Vec<&'static str> {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(header::ACCEPT_ENCODING, v);
        }
        encodings(&h).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn the_best_accepted_encoding_comes_first() {
        assert_eq!(accepting("gzip, deflate, br, zstd"), ["br", "gzip"]);
        assert_eq!(accepting("gzip"), ["gzip"]);
        assert_eq!(accepting("br;q=0, gzip;q=0.5"), ["gzip"]);
        assert!(accepting("identity").is_empty());
    }
}
