//! The WIT versions this host loads, and what a plugin may import.
//!
//! Each released `commission:plugin` version gets a bindings module here, generated from its
//! frozen `wit/since_vX.Y.Z/` folder, so a plugin built against an old SDK keeps loading when
//! the host moves on.

use wasmtime::Engine;
use wasmtime::component::Component;

/// `commission:plugin@0.1.0`.
pub mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "plugin",
        imports: { default: trappable },
    });
}

/// `commission:plugin@0.2.0`, the latest: the host's own types are these.
pub mod v0_2_0 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "plugin",
        imports: { default: trappable },
    });
}

/// The contract versions this host loads, newest last.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.2.0"];

/// A plugin built against 0.1.0 gets the latest types converted down, and its answers
/// converted up: the two versions' event, context and commission differ only in what 0.2.0
/// added.
mod from_v0_1_0 {
    use super::v0_1_0::commission::plugin::types as old;
    use super::v0_2_0::commission::plugin::types as new;

    impl From<&new::Event> for old::Event {
        fn from(event: &new::Event) -> Self {
            Self {
                id: event.id.clone(),
                kind: event.kind.clone(),
                customer: event.customer.clone(),
                occurred_at: event.occurred_at,
                amount: event.amount.clone(),
                currency: event.currency.clone(),
                attributes: event.attributes.clone(),
            }
        }
    }

    impl From<&new::Context> for old::Context {
        fn from(context: &new::Context) -> Self {
            Self {
                operator: context.operator.clone(),
                operator_currency: context.operator_currency.clone(),
                config: context.config.clone(),
                referral_chain: context
                    .referral_chain
                    .iter()
                    .map(|affiliate| old::Affiliate { id: affiliate.id.clone(), deal: affiliate.deal.clone() })
                    .collect(),
            }
        }
    }

    impl From<old::Commission> for new::Commission {
        fn from(commission: old::Commission) -> Self {
            Self {
                affiliate: commission.affiliate,
                amount: commission.amount,
                currency: commission.currency,
                rule: commission.rule,
                explanation: commission.explanation,
                reverses: None,
            }
        }
    }
}

/// WASI interfaces a plugin may import. A Rust plugin's std imports some of them even when the
/// plugin never calls them; they are served deterministically and with no authority (see
/// `host.rs`). HTTP and anything else are refused at upload.
///
/// `wasi:sockets` is allowed as an import but denied in use. Every libc-based toolchain
/// (CPython under componentize-py, C, Go) links its socket functions whether or not the plugin
/// opens a socket, so refusing the import would refuse plugins in every language but Rust. The
/// deterministic WASI serves it with TCP, UDP and name lookup all switched off and wasmtime's
/// default address check (deny every address): creating a socket or resolving a name answers
/// `access-denied` before any system call, on every run alike. `wasi:http` stays refused: the
/// host does not link it at all.
const ALLOWED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error(
        "the component imports `{0}`, which plugins may not use: a plugin gets only the \
         commission:plugin interfaces and deterministic WASI (sockets denied, no files, a stopped clock)"
    )]
    ForbiddenImport(String),
    #[error(
        "the component is built against commission:plugin {found}; this host loads {supported}. \
         Rebuild it with a commission-plugin-sdk release for one of those"
    )]
    UnsupportedVersion { found: String, supported: String },
    #[error(
        "the component does not export `commission:plugin/rules` (found: {found}); implement \
         `Plugin` and call `export_plugin!` in the plugin crate"
    )]
    MissingExport { found: String },
}

/// Checks the component's imports and exports against the contract and returns the version it
/// was built against.
pub fn check(engine: &Engine, component: &Component) -> Result<&'static str, ContractError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let (interface, version) = split_version(name);
        if let Some(package_interface) = interface.strip_prefix("commission:plugin/") {
            if !SUPPORTED.contains(&version) {
                return Err(ContractError::UnsupportedVersion {
                    found: version.to_owned(),
                    supported: SUPPORTED.join(", "),
                });
            }
            if !matches!(package_interface, "state" | "log" | "types") {
                return Err(ContractError::ForbiddenImport(name.to_owned()));
            }
        } else if !ALLOWED_WASI.contains(&interface) {
            return Err(ContractError::ForbiddenImport(name.to_owned()));
        }
    }
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let rules =
        exports.iter().map(|name| split_version(name)).find(|(interface, _)| *interface == "commission:plugin/rules");
    match rules {
        Some((_, version)) => SUPPORTED.iter().find(|supported| **supported == version).copied().ok_or_else(|| {
            ContractError::UnsupportedVersion { found: version.to_owned(), supported: SUPPORTED.join(", ") }
        }),
        None => Err(ContractError::MissingExport {
            found: if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") },
        }),
    }
}

fn split_version(name: &str) -> (&str, &str) {
    name.split_once('@').unwrap_or((name, ""))
}
