//! The JSON API's OpenAPI 3.1 document, generated from the handlers' own types and `#[utoipa::path]`
//! annotations, served at `/api/v1/openapi.json`, and the reference page rendered from it at `/docs/api`.
//!
//! The router and the document come from one list ([`routes`]): a handler is routed and documented by the same
//! entry, so the document lists every route of the API and every path it lists is served. What every
//! operation shares (the bearer key, 401 and 429, the `RateLimit` fields on every answer) is added once, by
//! [`conventions`].

use std::sync::LazyLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};
use utoipa::{
    OpenApi,
    openapi::{
        self, ContentBuilder, HeaderBuilder, ObjectBuilder, RefOr, ResponseBuilder, Schema, Type,
        schema::SchemaType,
        security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, account, error::ErrorBody, exports, generations};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "createimage2 API",
        version = "1",
        description = "Generate images with gpt-image-2. Authenticate with `Authorization: Bearer <API key>` (keys are made on the account page). Every answer is JSON; an error is `{\"error\", \"message\", \"field\"?}`. Every answer carries the request budget in `RateLimit-Policy` and `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers)."
    ),
    tags(
        (name = "generations", description = "Make images and follow them"),
        (name = "uploads", description = "Reference images, uploaded straight to the bucket"),
        (name = "account", description = "The member's account, exports and deletion"),
        (name = "reference", description = "This document"),
    ),
    components(schemas(ErrorBody)),
)]
struct ApiDoc;

/// Where the API is mounted: the document's paths carry it, the router's do not (it is nested there).
const MOUNT: &str = crate::events::API_PREFIX;

/// The API's routes, relative to [`MOUNT`], each with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(account::me))
        .routes(routes!(account::delete_account))
        .routes(routes!(generations::create_upload))
        .routes(routes!(
            generations::create_generation,
            generations::list_generations
        ))
        .routes(routes!(
            generations::get_generation,
            generations::delete_generation
        ))
        .routes(routes!(generations::cancel_generation))
        .routes(routes!(generations::generation_events))
        .routes(routes!(exports::request_export))
        .routes(routes!(exports::get_export))
        .routes(routes!(exports::download_export))
        .routes(routes!(openapi_json))
}

/// The document, built once.
pub static DOCUMENT: LazyLock<openapi::OpenApi> = LazyLock::new(|| {
    let (_, mut document) = routes().split_for_parts();
    conventions(&mut document);
    document
});

static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    DOCUMENT
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// The operation that serves the document needs no key.
const PUBLIC_OPERATION: &str = "openapi_json";

/// Paths under [`MOUNT`]; the bearer key on every operation but the document's; 401 and 429 on each; and the
/// `RateLimit` fields on every answer.
fn conventions(document: &mut openapi::OpenApi) {
    // utoipa copies the crate's license field, which this unpublished crate leaves empty.
    document.info.license = None;
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (format!("{MOUNT}{path}"), item))
        .collect();
    document
        .components
        .get_or_insert_with(openapi::Components::new)
        .add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    let error = || {
        ContentBuilder::new()
            .schema(Some(openapi::Ref::from_schema_name("Error")))
            .build()
    };
    let integer = || ObjectBuilder::new().schema_type(Type::Integer).build();
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let public = operation.operation_id.as_deref() == Some(PUBLIC_OPERATION);
            operation.security = Some(if public {
                Vec::new()
            } else {
                vec![SecurityRequirement::new("api_key", Vec::<String>::new())]
            });
            let responses = &mut operation.responses.responses;
            if !public {
                responses.insert(
                    "401".into(),
                    RefOr::T(
                        ResponseBuilder::new()
                            .description("No API key, or not a live one")
                            .content("application/json", error())
                            .header(
                                "WWW-Authenticate",
                                HeaderBuilder::new()
                                    .schema(string())
                                    .description(Some(
                                        "`Bearer realm=\"createimage2\"`, with `error=\"invalid_token\"` when a key was sent",
                                    ))
                                    .build(),
                            )
                            .build(),
                    ),
                );
            }
            responses.insert(
                "429".into(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(
                            "Over the request budget (or, for new generations, their own budget)",
                        )
                        .content("application/json", error())
                        .header(
                            "Retry-After",
                            HeaderBuilder::new()
                                .schema(integer())
                                .description(Some("Seconds to wait"))
                                .build(),
                        )
                        .build(),
                ),
            );
            for response in responses.values_mut() {
                if let RefOr::T(response) = response {
                    response.headers.insert(
                        "RateLimit-Policy".into(),
                        HeaderBuilder::new()
                            .schema(string())
                            .description(Some(
                                "The budget: `\"requests\";q=<requests>;w=<seconds>`",
                            ))
                            .build(),
                    );
                    response.headers.insert(
                        "RateLimit".into(),
                        HeaderBuilder::new()
                            .schema(string())
                            .description(Some(
                                "What is left of it: `\"requests\";r=<remaining>;t=<seconds until it resets>`",
                            ))
                            .build(),
                    );
                }
            }
        }
    }
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "reference",
    summary = "This document",
    description = "The OpenAPI 3.1 document of this API. Needs no key.",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT_JSON.as_str(),
    )
        .into_response()
}

/// A string schema listing a text enum's values.
fn words(values: impl Iterator<Item = &'static str>, description: &str) -> openapi::Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(values))
        .description(Some(description))
        .build()
}

pub fn status_schema() -> openapi::Object {
    words(
        jobs::generations::Status::ALL.iter().map(|s| s.as_str()),
        "queued → submitting → generating → storing → succeeded; or failed (refunded), or cancelled while queued (refunded)",
    )
}

pub fn aspect_ratio_schema() -> openapi::Object {
    words(
        jobs::generations::AspectRatio::ALL
            .iter()
            .map(|r| r.as_str()),
        "Width:height, or `auto` (the default: the model chooses)",
    )
}

pub fn resolution_schema() -> openapi::Object {
    words(
        jobs::generations::Resolution::ALL
            .iter()
            .map(|r| r.as_str()),
        "`1K` (the default) costs 10 credits, `2K` 20, `4K` 40; 2K and 4K are not offered with every ratio",
    )
}

/// `GET /docs/api`: the reference, rendered from the document.
pub async fn reference() -> Markup {
    let document = &*DOCUMENT;
    let components = document.components.as_ref();
    let schema = |reference: &RefOr<Schema>| -> Option<(String, openapi::Object)> {
        let (name, schema) = match reference {
            RefOr::Ref(r) => {
                let name = r.ref_location.rsplit('/').next()?.to_owned();
                (name.clone(), components?.schemas.get(&name)?.clone())
            }
            RefOr::T(schema) => (String::new(), RefOr::T(schema.clone())),
        };
        match schema {
            RefOr::T(Schema::Object(object)) => Some((name, object)),
            _ => None,
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "API reference · createimage2" }
                link rel="stylesheet" href=(crate::site::asset_url("app.css"));
            }
            body {
                main.reference {
                    h1 { (document.info.title) }
                    @if let Some(description) = &document.info.description { p { (prose(description)) } }
                    p { "The machine-readable document: " a href="/api/v1/openapi.json" { "/api/v1/openapi.json" } " (OpenAPI 3.1)." }
                    nav aria-label="Endpoints" {
                        ul {
                            @for (path, item) in &document.paths.paths {
                                @for (method, _) in operations(item) {
                                    li { a href={ "#" (anchor(method, path)) } { code { (method) " " (path) } } }
                                }
                            }
                        }
                    }
                    @for (path, item) in &document.paths.paths {
                        @for (method, operation) in operations(item) {
                            section.operation id=(anchor(method, path)) {
                                h2 { code { (method) " " (path) } }
                                @if let Some(summary) = &operation.summary { p { strong { (summary) } } }
                                @if let Some(description) = &operation.description { p { (prose(description)) } }
                                @if let Some(parameters) = &operation.parameters {
                                    h3 { "Parameters" }
                                    table {
                                        thead { tr { th { "name" } th { "in" } th { "required" } th { "description" } } }
                                        tbody {
                                            @for parameter in parameters {
                                                tr {
                                                    td { code { (parameter.name) } }
                                                    td { (word(&parameter.parameter_in)) }
                                                    td { (if matches!(parameter.required, utoipa::openapi::Required::True) { "yes" } else { "no" }) }
                                                    td { (prose(parameter.description.as_deref().unwrap_or_default())) }
                                                }
                                            }
                                        }
                                    }
                                }
                                @if let Some(body) = &operation.request_body {
                                    h3 { "Request body (JSON)" }
                                    @for content in body.content.values() {
                                        @if let Some((name, object)) = content.schema.as_ref().and_then(&schema) {
                                            (fields(&name, &object))
                                        }
                                    }
                                }
                                h3 { "Answers" }
                                dl {
                                    @for (status, response) in &operation.responses.responses {
                                        @if let RefOr::T(response) = response {
                                            dt { code { (status) } }
                                            dd {
                                                (prose(&response.description))
                                                @for content in response.content.values() {
                                                    @if let Some((name, _)) = content.schema.as_ref().and_then(&schema).filter(|(name, _)| !name.is_empty()) {
                                                        " — " a href={ "#schema-" (name) } { (name) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(components) = components {
                        h2 { "Objects" }
                        @for (name, schema) in &components.schemas {
                            @if let RefOr::T(Schema::Object(object)) = schema {
                                section.schema id={ "schema-" (name) } {
                                    (fields(name, object))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A schema's fields as a table.
fn fields(name: &str, object: &openapi::Object) -> Markup {
    html! {
        @if !name.is_empty() { h3 { (name) } }
        @if let Some(description) = &object.description { p { (prose(description)) } }
        @if !object.properties.is_empty() {
            // Focusable, so a keyboard can scroll it on a narrow screen.
            div.table-scroll role="region" tabindex="0" aria-label={ (if name.is_empty() { "Fields" } else { name }) " fields" } {
                table {
                    thead { tr { th { "field" } th { "type" } th { "required" } th { "description" } } }
                    tbody {
                        @for (field, property) in &object.properties {
                            tr {
                                td { code { (field) } }
                                td { (type_of(property)) }
                                td { (if object.required.contains(field) { "yes" } else { "no" }) }
                                td { (prose(&description_of(property))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn type_of(property: &RefOr<Schema>) -> String {
    match property {
        RefOr::Ref(r) => r.ref_location.rsplit('/').next().unwrap_or("").to_owned(),
        RefOr::T(Schema::Object(object)) => {
            let kind = match &object.schema_type {
                SchemaType::Type(kind) => word(kind),
                SchemaType::Array(kinds) => kinds.iter().map(word).collect::<Vec<_>>().join(" or "),
                SchemaType::AnyValue => "any".into(),
            };
            match &object.enum_values {
                Some(values) => format!(
                    "{kind}: {}",
                    values
                        .iter()
                        .map(|v| v.as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => kind,
            }
        }
        RefOr::T(Schema::Array(array)) => match &array.items {
            openapi::schema::ArrayItems::RefOrSchema(items) => {
                format!("array of {}", type_of(items))
            }
            openapi::schema::ArrayItems::False => "array".into(),
        },
        RefOr::T(Schema::OneOf(one_of)) => one_of
            .items
            .iter()
            .map(type_of)
            .collect::<Vec<_>>()
            .join(" or "),
        RefOr::T(_) => "object".into(),
    }
}

/// The document's text with its `code` spans (the only markup its descriptions use) as `<code>`.
fn prose(text: &str) -> Markup {
    html! {
        @for (n, part) in text.split('`').enumerate() {
            @if n % 2 == 1 { code { (part) } } @else { (part) }
        }
    }
}

/// How a serializable enum of the document spells itself (`path`, `string`).
fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn description_of(property: &RefOr<Schema>) -> String {
    match property {
        RefOr::T(Schema::Object(object)) => object.description.clone().unwrap_or_default(),
        RefOr::T(Schema::Array(array)) => array.description.clone().unwrap_or_default(),
        RefOr::T(Schema::OneOf(one_of)) => one_of.description.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// An item's operations, with their methods in capitals, in a fixed order.
fn operations(item: &openapi::PathItem) -> Vec<(&'static str, &openapi::path::Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_ref().map(|o| (method, o)))
    .collect()
}

fn anchor(method: &str, path: &str) -> String {
    let slug: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{}{slug}", method.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_stream_route_the_metrics_name_is_the_documents() {
        let route = crate::events::API_GENERATION_ROUTE;
        assert!(DOCUMENT.paths.paths.contains_key(route), "{route}");
    }
}
