//! `POST /v1/files`: an upload (the raw body, its `Content-Type`, `?name=`), streamed to the
//! file store under its SHA-256; the answer is what a hyperlink envelope needs, with a signed
//! download link that expires. `GET /v1/files/{sha256}?...`: that link.

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Params, Shared, caller};
use crate::error::ApiError;
use crate::files::{FileError, Link};
use crate::store::{AccountStore, now_ms};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    name: String,
}

/// `type/subtype` of token characters, parameters allowed after `;`.
fn valid_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s)) && ct.len() <= 255 && ct.is_ascii()
}

fn valid_file_name(name: &str) -> bool {
    (1..=255).contains(&name.len()) && !name.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | '"'))
}

/// Percent-encodes all but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("files may have at most {max} bytes"))
}

pub(crate) async fn upload<S: AccountStore>(
    State(st): State<Shared<S>>,
    headers: HeaderMap,
    Params(q): Params<UploadQuery>,
    body: RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller(&st, &headers).await?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !valid_content_type(ct) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the file's type in `Content-Type` (type/subtype)",
        ));
    }
    if !valid_file_name(&q.name) {
        return Err(ApiError::bad_request("`name` must be 1-255 characters without control characters, / \\ or \""));
    }
    let max = st.cfg.max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let stream = Box::pin(body.into_data_stream().map_err(|e| e.to_string()));
    let (sha256, size) = st.files.put(stream, max).await.map_err(|e| match e {
        FileError::TooLarge(max) => too_large(max),
        FileError::Body(m) => ApiError::bad_request(format!("the upload broke off: {m}")),
        FileError::Io(m) => ApiError::internal(m),
    })?;
    let exp = now_ms().saturating_add((st.cfg.file_link_ttl_secs as i64).saturating_mul(1000));
    let sig = st.links.sign(&sha256, ct, &q.name, exp);
    let base = if st.cfg.public_url.is_empty() {
        // The address the client reached us at, with our scheme.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        let scheme = if st.cfg.tls_cert.is_empty() { "http" } else { "https" };
        format!("{scheme}://{host}")
    } else {
        st.cfg.public_url.trim_end_matches('/').to_owned()
    };
    let url = format!("{base}/v1/files/{sha256}?ct={}&name={}&exp={exp}&sig={sig}", encode(ct), encode(&q.name));
    metrics::counter!("hermes_accounts_uploads_total").increment(1);
    metrics::counter!("hermes_accounts_upload_bytes_total").increment(size);
    // The fields of wire::pb::Hyperlink.
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "url": url,
            "content_type": ct,
            "size": size,
            "sha256": sha256,
            "expires_at_ms": exp,
            "file_name": q.name,
        })),
    ))
}

pub(crate) async fn download<S: AccountStore>(
    State(st): State<Shared<S>>,
    Path(sha256): Path<String>,
    Params(link): Params<Link>,
) -> Result<Response, ApiError> {
    if !st.links.verify(&sha256, &link, now_ms()) {
        return Err(ApiError::forbidden("the link is not valid or has expired"));
    }
    let (reader, size) = st
        .files
        .open(&sha256)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("the file is no longer stored"))?;
    let body = RawBody::from_stream(tokio_util::io::ReaderStream::new(reader));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).map_err(ApiError::internal);
    h.insert(header::CONTENT_TYPE, value(&link.ct)?);
    h.insert(header::CONTENT_LENGTH, size.into());
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("attachment; filename=\"{}\"", link.name.replace(|c: char| !c.is_ascii(), "_")))?,
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}
