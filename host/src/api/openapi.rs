//! The API as a published contract: the OpenAPI 3.1 document, built by utoipa from the
//! handlers' own `#[utoipa::path]` attributes and wire types, served at `GET /openapi.json` and
//! committed as `openapi.json` at the repository root (`commission-host openapi --write
//! openapi.json`; `tests/openapi.rs` fails when the two differ).
//!
//! The router is an [`utoipa_axum::router::OpenApiRouter`] fed by `routes!`, so a handler is
//! routed at the path its attribute documents and a route cannot be added without its document.
//! What every credentialed operation may answer (a wrong credential, the failed-credential
//! throttle, a full disk) and what every body may be refused for is added here, once, rather
//! than on each handler.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Header, OpenApi, Ref, RefOr, Response};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::event::FieldError;

/// The credential schemes, by the names the handlers' `security(...)` use.
const ADMIN: &str = "admin_token";
const OPERATOR: &str = "operator_key";
const POSTBACK: &str = "postback_token";
const SIGNATURE: &str = "webhook_signature";

/// Every refusal: `{"error", "message", "details"?}`; `details` names each bad field.
#[derive(ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // Only its schema is used: `ApiError` writes the body.
pub struct ErrorSchema {
    /// A stable code: `invalid_event`, `unauthorized`, `quota_exceeded`, ...
    error: String,
    /// What was wrong and the fix, for a person.
    message: String,
    /// Each bad field (absent when none is at fault).
    details: Option<Vec<FieldError>>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "commission-host",
        description = "Event-driven affiliate commissions: operators send events, their WebAssembly plugins decide the commissions, the host keeps the ledger. Every refusal is an `Error`."
    ),
    components(schemas(ErrorSchema, FieldError)),
    tags(
        (name = "operators", description = "The platform admin's: operators, their limits and credentials"),
        (name = "plugins", description = "An operator's plugin versions: upload, activation, shadow, backtest"),
        (name = "affiliates", description = "Affiliates and their deals"),
        (name = "events", description = "Ingestion (webhook and postback) and the view of one event"),
        (name = "commissions", description = "The ledger and the moves of a commission's status"),
        (name = "periods", description = "Closing months and their statements"),
        (name = "settings", description = "An operator's settings and FX rates"),
        (name = "probes", description = "Liveness, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

/// The security schemes and the answers shared by many operations.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            ADMIN,
            bearer("`Authorization: Bearer <admin token>`: the platform admin (COMMISSION_HOST_ADMIN_TOKEN); opens every operator's routes too"),
        );
        components.add_security_scheme(
            OPERATOR,
            bearer("`Authorization: Bearer chk_...`: an operator's API key, on its own routes only"),
        );
        components.add_security_scheme(
            POSTBACK,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The operator's postback token, as the `token` query parameter",
            ))),
        );
        components.add_security_scheme(
            SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "A Standard Webhooks signature of the body with the operator's webhook secret, with the `webhook-id` and `webhook-timestamp` headers",
            ))),
        );
        for (name, description) in SHARED {
            let mut response = Response::new(*description);
            response.content.insert("application/json".to_owned(), Content::new(Some(Ref::from_schema_name("Error"))));
            if *name == "TooManyRequests" {
                response.headers.insert("Retry-After".to_owned(), Header::new(u64::schema()));
            }
            components.responses.insert((*name).to_owned(), RefOr::T(response));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post];
            for operation in operations.into_iter().flatten() {
                add_shared_answers(path, operation);
            }
        }
    }
}

/// Answers many operations share, by component name.
const SHARED: &[(&str, &str)] = &[
    ("BadJson", "the body is not JSON"),
    ("Unauthorized", "a missing or wrong credential, or an operator that does not exist"),
    ("NotFound", "the admin named an operator (or the path names a record) that does not exist"),
    ("BodyTimeout", "the body did not arrive whole in time"),
    ("BodyTooLarge", "the body is over the limit"),
    ("Invalid", "a field, parameter or body refused: `details` names each, with the fix"),
    ("TooManyRequests", "too many failed credentials from this address, or over the operator's events per second"),
    ("StorageUnavailable", "the ledger cannot write (a full or failing disk); nothing was acknowledged"),
];

fn add_shared_answers(path: &str, operation: &mut Operation) {
    let mut shared = Vec::new();
    if operation.security.as_ref().is_some_and(|security| !security.is_empty()) {
        shared.extend([("401", "Unauthorized"), ("429", "TooManyRequests"), ("503", "StorageUnavailable")]);
    }
    if path.starts_with("/v1/operators/{op}") {
        shared.push(("404", "NotFound"));
    }
    // Every parameter is checked (a repeated query parameter, a malformed path segment).
    if operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty()) {
        shared.push(("422", "Invalid"));
    }
    if operation.request_body.is_some() {
        shared.extend([("408", "BodyTimeout"), ("413", "BodyTooLarge"), ("422", "Invalid")]);
        let json = operation.request_body.as_ref().is_some_and(|body| body.content.contains_key("application/json"));
        if json {
            shared.push(("400", "BadJson"));
        }
    }
    for (status, name) in shared {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| Ref::from_response_name(name).into());
    }
}

/// The document. Built from the routes themselves ([`super::documented_routes`]), then given
/// the security schemes and the shared answers.
pub fn document() -> OpenApi {
    let mut document = super::documented_routes().into_openapi();
    Contract.modify(&mut document);
    document
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    responses((status = 200, description = "this document (OpenAPI 3.1)", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(document_json);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// The document as served and as committed (`openapi.json`): pretty JSON and a newline.
pub fn document_json() -> String {
    let mut json = document().to_pretty_json().expect("an OpenAPI document serializes");
    json.push('\n');
    json
}
