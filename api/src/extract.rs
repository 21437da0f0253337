//! The JSON API's extractors: a body, a path and a query string are each read with the API's own refusals, so
//! every answer under `/api` is the documented JSON error — never axum's plain-text rejection. Each names the
//! field at fault; a field the request does not take is refused (422), never silently ignored.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::AppError;

/// A JSON body of type `T`. Refusals: no JSON content type (415), a body over the route's limit (413), a
/// document that does not parse or does not fit `T` (422 naming the path, e.g. `reference_upload_ids[0]`, or
/// `body` when the document as a whole is broken), and fields `T` does not have (422 naming them).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        if !is_json(request.headers()) {
            return Err(AppError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
                match rejection {
                    BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                        AppError::PayloadTooLarge
                    }
                    other => AppError::BadRequest(other.body_text()),
                }
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = decode(&mut deserializer)?;
        deserializer.end().map_err(|error| AppError::InvalidBody {
            field: "body".into(),
            message: error.to_string(),
        })?;
        Ok(Self(value))
    }
}

/// Whether the content type is JSON: `application/json` or `application/<anything>+json`, any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Path parameters of type `T`. A parameter that does not parse (`/generations/not-a-uuid`) names nothing that
/// can exist: 404 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        use axum::extract::{path::ErrorKind, rejection::PathRejection};
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(failed)) => {
                let kind = failed.into_kind();
                let field = match &kind {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                    _ => None,
                };
                // A route with one parameter names it even when the error does not (a `Uuid` reports only
                // its own message).
                let field = match field {
                    Some(field) => field,
                    None => axum::extract::RawPathParams::from_request_parts(parts, state)
                        .await
                        .ok()
                        .and_then(|params| {
                            let mut names = params.iter().map(|(name, _)| name.to_owned());
                            let first = names.next();
                            first.filter(|_| names.next().is_none())
                        })
                        .unwrap_or_else(|| "path".to_owned()),
                };
                Err(AppError::NoSuchId {
                    field,
                    message: kind.to_string(),
                })
            }
            Err(other) => Err(AppError::Internal(anyhow::anyhow!(
                "path parameters: {}",
                other.body_text()
            ))),
        }
    }
}

/// A query string of type `T`: a value that does not fit is a 422 naming its parameter, and a parameter `T`
/// does not take is refused (422), so a misspelt `limt=5` is not silently the default.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        decode(deserializer).map(Self)
    }
}

/// Deserializes `T`, naming where it stopped and why, and refusing the fields `T` does not have.
fn decode<'de, D, T>(deserializer: D) -> Result<T, AppError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: serde::Deserialize<'de>,
{
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignoring = serde_ignored::Deserializer::new(deserializer, &mut note);
    let value: T = serde_path_to_error::deserialize(ignoring).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        AppError::InvalidBody {
            field,
            message: error.inner().to_string(),
        }
    })?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(AppError::UnknownFields(unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Body {
        prompt: String,
        #[serde(default)]
        ids: Vec<u32>,
    }

    fn json(text: &str) -> Result<Body, AppError> {
        decode(&mut serde_json::Deserializer::from_str(text))
    }

    fn refused_field(result: Result<Body, AppError>) -> String {
        match result {
            Err(AppError::InvalidBody { field, .. }) => field,
            Err(AppError::UnknownFields(fields)) => fields.join(","),
            other => panic!("not refused with a field: {other:?}"),
        }
    }

    #[test]
    fn a_body_that_fits_is_read() {
        assert_eq!(
            json(r#"{"prompt": "a cat", "ids": [1]}"#).unwrap(),
            Body {
                prompt: "a cat".into(),
                ids: vec![1]
            }
        );
    }

    #[test]
    fn the_field_at_fault_is_named_by_its_path() {
        assert_eq!(refused_field(json(r#"{"prompt": 7}"#)), "prompt");
        assert_eq!(
            refused_field(json(r#"{"prompt": "a", "ids": [1, "x"]}"#)),
            "ids[1]"
        );
        assert_eq!(refused_field(json("[]")), "body");
    }

    #[test]
    fn every_unknown_field_is_named() {
        assert_eq!(
            refused_field(json(r#"{"prompt": "a", "n": 4, "seed": 1}"#)),
            "n,seed"
        );
    }

    #[test]
    fn query_parameters_are_checked_like_body_fields() {
        #[derive(Debug, serde::Deserialize)]
        struct Query {
            #[allow(dead_code)]
            limit: Option<i64>,
        }
        let read = |query: &str| -> Result<Query, AppError> {
            decode(serde_urlencoded::Deserializer::new(form_urlencoded::parse(
                query.as_bytes(),
            )))
        };
        assert!(read("limit=5").is_ok());
        assert!(
            matches!(read("limit=five"), Err(AppError::InvalidBody { field, .. }) if field == "limit")
        );
        assert!(
            matches!(read("limt=5"), Err(AppError::UnknownFields(fields)) if fields == ["limt"])
        );
    }
}
