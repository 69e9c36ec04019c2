//! `serve --demo`: a ready operator to try the API on, with the reference plugin and two
//! affiliates (a master and a sub-affiliate), and the calls to make printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use commission_host::event::now_ms;
use commission_host::pipeline::Pipeline;
use commission_host::secrets::{OperatorCredentials, sha256_hex};
use commission_host::store::records::{AffiliateRecord, OperatorRecord};
use sha2::{Digest, Sha256};

const OPERATOR: &str = "demo";

pub async fn set_up(pipeline: &Pipeline, plugin: &Path, address: SocketAddr) -> anyhow::Result<()> {
    let wasm = std::fs::read(plugin).with_context(|| {
        format!(
            "reading the demo plugin {}: build it first with `cargo build-plugins` (from the repository root)",
            plugin.display()
        )
    })?;
    let store = pipeline.store();
    let credentials = OperatorCredentials::generate();
    let mut operator = store.operator(OPERATOR)?.unwrap_or_else(|| OperatorRecord {
        id: OPERATOR.into(),
        name: "Demo operator".into(),
        currency: "USD".into(),
        api_key_sha256: String::new(),
        postback_token_sha256: String::new(),
        webhook_secret: String::new(),
        config: BTreeMap::new(),
        active_plugin: None,
        shadow_plugin: None,
        dated_activations: Vec::new(),
        created_at: now_ms(),
        limits: Default::default(),
        previous_credentials: Vec::new(),
        fx_rates: Default::default(),
        late_events: Default::default(),
    });
    operator.api_key_sha256 = sha256_hex(&credentials.api_key);
    operator.postback_token_sha256 = sha256_hex(&credentials.postback_token);
    operator.webhook_secret = credentials.webhook_secret.clone();

    let sha256 = hex::encode(Sha256::digest(&wasm));
    let current = match operator.active_plugin {
        Some(version) => store.plugin(OPERATOR, version)?.filter(|record| record.sha256 == sha256),
        None => None,
    };
    if current.is_none() {
        let plugins = pipeline.plugins().clone();
        let record = tokio::task::spawn_blocking(move || {
            let prepared = plugins.prepare(OPERATOR, wasm)?;
            anyhow::Ok(plugins.add(OPERATOR, prepared, None)?)
        })
        .await??;
        operator.active_plugin = Some(record.version);
    }
    store.put_operator(&operator)?;
    for (id, parent, deal) in [
        ("master", None, vec![("override_percent", "10")]),
        ("aff1", Some("master"), vec![("ftd_cpa", "10"), ("first_trade_cpa", "5"), ("volume_bonus", "20")]),
    ] {
        store
            .put_affiliate(
                OPERATOR,
                &AffiliateRecord {
                    id: id.into(),
                    parent: parent.map(Into::into),
                    deal: deal.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                    updated_at: now_ms(),
                },
                None,
            )?
            .map_err(|refused| anyhow::anyhow!("the demo operator is over its quota: {refused:?}"))?;
    }
    pipeline.make_durable().await?;

    let base = format!("http://{address}");
    let key = &credentials.api_key;
    let token = &credentials.postback_token;
    println!(
        r#"
demo operator `{OPERATOR}` (USD), plugin multi-event v{version}, affiliates aff1 (under master, 10% override)
  api key:        {key}
  postback token: {token}
  webhook secret: {secret}

try:
  curl "{base}/postback/{OPERATOR}?token={token}&type=deposit&id=d-1&customer=c1&amount=100.00&currency=USD&affiliate=aff1"
  curl -X POST {base}/v1/operators/{OPERATOR}/events -H "Authorization: Bearer {key}" \
       -d '[{{"id":"t-1","type":"trade","customer":"c1","attributes":{{"lots":"4"}}}},{{"id":"t-2","type":"trade","customer":"c1","attributes":{{"lots":"6.5"}}}}]'
  curl {base}/v1/operators/{OPERATOR}/commissions -H "Authorization: Bearer {key}"
  curl {base}/v1/operators/{OPERATOR}/events/t-2 -H "Authorization: Bearer {key}"
"#,
        version = operator.active_plugin.unwrap_or_default(),
        secret = credentials.webhook_secret,
    );
    Ok(())
}
