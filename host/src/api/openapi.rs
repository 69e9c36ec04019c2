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
const AFFILIATE: &str = "affiliate_key";

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
        (name = "cluster", description = "Several hosts on NATS JetStream: the live nodes and where each operator is served"),
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
            AFFILIATE,
            bearer("`Authorization: Bearer <affiliate key>`: a read-only key an operator issued one affiliate; opens only that affiliate's commissions, statements and payout report lines"),
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
                "Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">` with the operator's webhook secret (`whsec_<base64 key>`), beside the headers `webhook-id` (the message id) and `webhook-timestamp` (unix seconds, digits only, within 5 minutes of the host's clock). With this header present the API key is not looked at.",
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
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
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

/// The document. Built with the router itself ([`super::assemble`]), then given the security
/// schemes and the shared answers.
pub fn document() -> OpenApi {
    let (_, mut document) = super::assemble(|credentialed| credentialed);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Arc, Once};

    use axum::Router;
    use axum::routing::{MethodFilter, on};

    use super::*;
    use crate::api::AppState;

    /// The paths the router serves, read from its `Debug` (axum lists its routes nowhere else):
    /// the path router's `Node { paths: {RouteId(n): "/path", ...} }`, before its fallback router.
    fn routed_paths(router: &Router<Arc<AppState>>) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        let (path_router, _) =
            debug.split_once("fallback_router").expect("axum's Router debug shows its fallback_router");
        path_router
            .split("RouteId(")
            .filter_map(|entry| {
                let (id, rest) = entry.split_once(')')?;
                let path = rest.strip_prefix(": \"")?;
                id.bytes().all(|b| b.is_ascii_digit()).then(|| path.split('"').next().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// Whether the router has a handler for `method` at `path`: axum refuses (panics) to take a
    /// second one.
    fn routes_method(router: &Router<Arc<AppState>>, path: &str, method: MethodFilter) -> bool {
        static QUIET: Once = Once::new();
        QUIET.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !info.to_string().contains("Overlapping method route") {
                    default(info);
                }
            }));
        });
        let router = router.clone();
        catch_unwind(AssertUnwindSafe(|| router.route(path, on(method, || async {})))).is_err()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let (router, _) = super::super::assemble(|credentialed| credentialed);
        let document = document();
        let methods = [
            ("get", MethodFilter::GET),
            ("put", MethodFilter::PUT),
            ("post", MethodFilter::POST),
            ("delete", MethodFilter::DELETE),
            ("patch", MethodFilter::PATCH),
        ];
        let documented: BTreeSet<(String, &str)> = document
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                let present = [
                    item.get.is_some(),
                    item.put.is_some(),
                    item.post.is_some(),
                    item.delete.is_some(),
                    item.patch.is_some(),
                ];
                methods.iter().zip(present).filter(|(_, present)| *present).map(|((name, _), _)| (path.clone(), *name))
            })
            .collect();
        let paths = routed_paths(&router);
        assert!(paths.len() > 20, "the router's paths were not read from its Debug: {paths:?}");
        let routed: BTreeSet<(String, &str)> = paths
            .iter()
            .flat_map(|path| {
                methods
                    .iter()
                    .filter(|(_, filter)| routes_method(&router, path, *filter))
                    .map(|(name, _)| (path.clone(), *name))
                    .collect::<Vec<_>>()
            })
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routed but not in the OpenAPI document (register the handler with `routes!` and a #[utoipa::path]): {undocumented:?}"
        );
        assert!(unrouted.is_empty(), "in the OpenAPI document but not routed: {unrouted:?}");
    }

    #[test]
    fn the_document_names_every_credential_an_operation_takes() {
        let document = document();
        let schemes = &document.components.as_ref().expect("components").security_schemes;
        for name in [ADMIN, OPERATOR, AFFILIATE, POSTBACK, SIGNATURE] {
            assert!(schemes.contains_key(name), "no security scheme {name}");
        }
        let json = serde_json::to_value(&document).expect("the document serializes");
        let postback = &json["paths"]["/postback/{op}"]["get"];
        assert_eq!(postback["security"], serde_json::json!([{ "postback_token": [] }]));
        assert_eq!(postback["responses"]["401"]["$ref"], "#/components/responses/Unauthorized");
        assert_eq!(json["paths"]["/healthz"]["get"]["security"], serde_json::Value::Null);
    }
}
