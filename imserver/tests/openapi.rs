//! docs/openapi.json cannot drift from the HTTP API: its paths are exactly the methods the API
//! serves (`Method::ALL`); a real node answers each path's documented example with 200 and an
//! answer holding every field the document says it always has; and the parameters each method
//! takes (as its refusal of an unknown field lists them) are the ones the document names.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow, ensure};
use imserver::api::ROUTE_PREFIX;
use imserver::api::methods::Method;
use imtestkit::{Cluster, NodeOpts, http_request_text};
use serde_json::Value;

const KEY: &str = "openapi-test-key-0123456789";

fn document() -> Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))
}

/// The method names the document has a path for.
fn documented(doc: &Value) -> Result<BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .context("no paths")?
        .keys()
        .map(|path| {
            path.strip_prefix(ROUTE_PREFIX)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{path} is not under {ROUTE_PREFIX}"))
        })
        .collect()
}

fn served() -> BTreeSet<String> {
    Method::ALL.iter().map(|m| m.name().to_owned()).collect()
}

#[test]
fn the_document_has_a_path_for_every_method_served_and_no_other() -> Result<()> {
    let doc = document()?;
    ensure!(doc["openapi"] == "3.1.0", "not an OpenAPI 3.1.0 document");
    let documented = documented(&doc)?;
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    ensure!(
        undocumented.is_empty(),
        "served but not in docs/openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    ensure!(
        unserved.is_empty(),
        "in docs/openapi.json but not served: {unserved:?}"
    );
    ensure!(
        doc["webhooks"]["presence"]["post"].is_object(),
        "the presence webhook is not documented"
    );
    Ok(())
}

/// `#/components/schemas/Name` as the schema it names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/")
            .map_or(schema, |p| doc.pointer(&format!("/{p}")).unwrap_or(schema)),
        None => schema,
    }
}

/// Every property a request schema names, over all of its `oneOf` alternatives.
fn documented_params(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    let alternatives: Vec<&Value> = match schema["oneOf"].as_array() {
        Some(list) => list.iter().map(|s| resolve(doc, s)).collect(),
        None => vec![schema],
    };
    alternatives
        .into_iter()
        .filter_map(|s| s["properties"].as_object())
        .flat_map(|props| props.keys().cloned())
        .collect()
}

/// `example` with a field no method has.
fn with_unknown_field(example: &Value) -> String {
    let mut body = example.clone();
    if let Value::Object(fields) = &mut body {
        fields.insert("zz_not_a_parameter".into(), Value::Bool(true));
    }
    body.to_string()
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, Value)> {
    let auth = format!("Bearer {KEY}");
    let answer = http_request_text(addr, "POST", path, &[("Authorization", &auth)], body).await?;
    Ok((
        answer.status,
        serde_json::from_str(&answer.body).unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn a_node_answers_every_documented_example_as_documented() -> Result<()> {
    let doc = document()?;
    let cluster = Cluster::start(
        1,
        NodeOpts::default()
            .arg("--api-listen", "127.0.0.1:0")
            .arg("--api-key", KEY),
    )
    .await?;
    let api = cluster.nodes[0]
        .api
        .context("the node has no API address")?;
    let served = served();
    for (path, item) in doc["paths"].as_object().context("no paths")? {
        let name = path.strip_prefix(ROUTE_PREFIX).unwrap_or(path);
        if !served.contains(name) {
            continue;
        }
        let content = &item["post"]["requestBody"]["content"]["application/json"];
        let example = content
            .get("example")
            .with_context(|| format!("{path} has no request example"))?;
        let (status, answer) = post(api, path, &example.to_string()).await?;
        ensure!(
            status == 200,
            "{path} answered its documented example {example} with {status}: {answer}"
        );
        let (status, refusal) = post(api, path, &with_unknown_field(example)).await?;
        ensure!(
            status == 400 && refusal["error"] == "unknown_field",
            "{path} took a field it does not have: {status} {refusal}"
        );
        let takes = refusal["message"]
            .as_str()
            .and_then(|m| m.split_once("this call takes: "))
            .map(|(_, list)| {
                list.split(", ")
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned)
                    .collect::<BTreeSet<_>>()
            })
            .with_context(|| format!("{path}: the refusal lists no parameters: {refusal}"))?;
        let params = documented_params(&doc, &content["schema"]);
        ensure!(
            takes == params,
            "{path} takes {takes:?} but docs/openapi.json documents {params:?}"
        );
        let schema = resolve(
            &doc,
            &item["post"]["responses"]["200"]["content"]["application/json"]["schema"],
        );
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap_or_default();
            ensure!(
                answer.get(field).is_some(),
                "{path} answered without {field:?}, which docs/openapi.json says it always has: {answer}"
            );
        }
    }
    Ok(())
}
