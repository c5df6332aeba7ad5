//! The LLM gateway's world for one test: the fake OpenRouter, a policy that aims `openrouter.ai`
//! at it (upstream URL with its port, a pin to 127.0.0.1, its CA as `extra_ca_file`), a scratch
//! directory for the proxy's CA outputs and spend data, and the running proxy with clients that
//! trust the per-Pod CA it wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::fake_openrouter::FakeOpenRouter;
use crate::llm_client::{CurlPost, LlmClient};
use crate::proxy::{Proxy, ProxyBuilder};

/// The intercepted host.
pub const HOST: &str = "openrouter.ai";
/// The model most tests ask for (priced by the default spec).
pub const MODEL: &str = "openai/gpt-4o-mini";
/// A second priced model (for `models` lists).
pub const MODEL_2: &str = "anthropic/claude-3.5-haiku";
/// A priced embeddings model.
pub const EMBED_MODEL: &str = "openai/text-embedding-3-small";

/// How long a test waits for the gateway to settle, flush or refresh something.
pub const SETTLE: Duration = Duration::from_secs(15);

/// The reference sidecar's variables: cleared for the proxy unless a test sets them, so the test
/// runner's environment cannot configure the gateway behind the test's back.
pub const REFERENCE_ENV: [&str; 10] = [
    "MAX_COST_USD",
    "EVALUATION_RUN_ID",
    "RESTRICTED_MODELS",
    "PROVIDER_ORDER",
    "PROVIDER_ALLOW_FALLBACKS",
    "OPENROUTER_MANAGEMENT_KEY",
    "OPENROUTER_WORKSPACE_ID",
    "OPENROUTER_EXPECTED_API_KEY_SHA256",
    "UPSTREAM_BASE_URL",
    "PROXY_DATA_DIR",
];

/// A policy file as ordered TOML tables of `key = value` (values given as JSON, rendered as
/// TOML: strings, numbers, booleans, arrays, inline tables).
#[derive(Clone, Debug, Default)]
pub struct GatewaySpec {
    tables: Vec<(String, Vec<(String, Value)>)>,
}

impl GatewaySpec {
    /// Sets `key` in table `table` (`""` is the root; `intercept.budget`, `hosts."x"`, ...).
    pub fn set(mut self, table: &str, key: &str, value: impl Into<Value>) -> GatewaySpec {
        let value = value.into();
        let entries = match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, entries)) => entries,
            None => {
                self.tables.push((table.to_string(), Vec::new()));
                &mut self.tables.last_mut().expect("just pushed").1
            }
        };
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => entries.push((key.to_string(), value)),
        }
        self
    }

    /// Removes `key` from `table` (no-op when absent).
    pub fn unset(mut self, table: &str, key: &str) -> GatewaySpec {
        if let Some((_, entries)) = self.tables.iter_mut().find(|(t, _)| t == table) {
            entries.retain(|(k, _)| k != key);
        }
        self
    }

    /// Prices `model` in the policy (USD per token, as decimal strings).
    pub fn price(self, model: &str, prompt: &str, completion: &str) -> GatewaySpec {
        let table = format!("intercept.pricing.models.{}", quote(model));
        self.set(&table, "prompt", prompt)
            .set(&table, "completion", completion)
    }

    /// `[intercept.budget] max_cost_usd`.
    pub fn budget(self, usd: &str) -> GatewaySpec {
        self.set("intercept.budget", "max_cost_usd", usd)
    }

    /// The policy as TOML (the root table first).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let mut tables: Vec<&(String, Vec<(String, Value)>)> = self.tables.iter().collect();
        tables.sort_by_key(|(t, _)| !t.is_empty());
        for (table, entries) in tables {
            if !table.is_empty() {
                s.push_str(&format!("\n[{table}]\n"));
            }
            for (k, v) in entries {
                s.push_str(&format!("{k} = {}\n", toml_value(v)));
            }
        }
        s
    }
}

fn quote(s: &str) -> String {
    // A JSON string of printable ASCII is a valid TOML basic string.
    Value::from(s).to_string()
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", quote(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Null => "\"\"".into(),
        other => other.to_string(),
    }
}

/// The fake upstream and the scratch directory one test's proxies share (a restarted proxy
/// reuses the same data directory).
pub struct Gateway {
    /// The fake OpenRouter.
    pub fake: FakeOpenRouter,
    /// Policy, `certs/` and `data/`.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the fake and makes the scratch directory.
    pub async fn new() -> Result<Gateway> {
        let fake = FakeOpenRouter::start().await?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-gateway-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("certs"))?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        Ok(Gateway { fake, dir })
    }

    /// Where the proxy writes `ca.crt`, `ridges-ca.crt`, `ca-bundle.crt`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The spend data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The policy file path.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// The default gateway policy: openrouter.ai → the fake, $1 budget, [`MODEL`], [`MODEL_2`]
    /// and [`EMBED_MODEL`] priced in the policy (no fetch), limits far above what tests send.
    ///
    /// Prices keep the worst case of a test request (~1.2k prompt tokens bound, `max_tokens`
    /// 100) above what the fake charges by default ($0.00123), so nothing is an overcharge.
    pub fn spec(&self) -> GatewaySpec {
        let host = format!("hosts.{}", quote(HOST));
        GatewaySpec::default()
            .set("", "version", 1)
            .set("", "phase", "agent")
            .set("intercept", "hosts", json!([HOST]))
            .set("intercept", "upstream", self.fake.upstream_url())
            .set(
                "intercept",
                "extra_ca_file",
                self.fake.ca_pem_path().display().to_string(),
            )
            .set("intercept", "connect_timeout", "2s")
            .set("intercept", "read_timeout", "20s")
            .set(
                "intercept.tls",
                "output_dir",
                self.certs_dir().display().to_string(),
            )
            .set("intercept.budget", "max_cost_usd", "1.00")
            .set(
                "intercept.budget",
                "data_dir",
                self.data_dir().display().to_string(),
            )
            .set("intercept.budget", "evaluation_run_id", "run-test")
            .set("intercept.pricing", "fetch", false)
            .price(MODEL, "0.000001", "0.00002")
            .price(MODEL_2, "0.000002", "0.00003")
            .price(EMBED_MODEL, "0.0000001", "0")
            .set("intercept.limits", "requests_per_second", 10000)
            .set("intercept.limits", "burst", 10000)
            .set("intercept.limits", "max_concurrent", 256)
            .set("tunnel", "allow", json!([]))
            .set(&host, "pin", json!(["127.0.0.1"]))
            .set(&host, "port", self.fake.port())
            .set(&host, "allow_ranges", json!(["127.0.0.0/8"]))
    }

    /// Starts a proxy with `spec`.
    pub async fn start(&self, spec: &GatewaySpec) -> Result<RunningGateway> {
        self.start_with(spec, &[]).await
    }

    /// Starts a proxy with `spec` and environment `envs` (the reference's variables not named
    /// there are cleared; `PROXY_DATA_DIR` defaults to [`Gateway::data_dir`]).
    pub async fn start_with(
        &self,
        spec: &GatewaySpec,
        envs: &[(&str, &str)],
    ) -> Result<RunningGateway> {
        let builder = self.builder(spec, envs)?;
        RunningGateway::start(builder, self).await
    }

    /// The proxy builder `start_with` uses, for tests that add flags.
    pub fn builder(&self, spec: &GatewaySpec, envs: &[(&str, &str)]) -> Result<ProxyBuilder> {
        crate::policy::write_atomic(&self.policy_path(), spec.to_toml().as_bytes())?;
        let mut b = Proxy::builder()
            .policy(self.policy_path())
            .arg("--usage-listen")
            .arg("127.0.0.1:0")
            .arg("--certs-dir")
            .arg(self.certs_dir());
        for name in REFERENCE_ENV {
            if !envs.iter().any(|(k, _)| *k == name) {
                let value = if name == "PROXY_DATA_DIR" {
                    self.data_dir().display().to_string()
                } else {
                    String::new()
                };
                b = b.env(name, value);
            }
        }
        for (k, v) in envs {
            b = b.env(*k, *v);
        }
        Ok(b)
    }

    /// `<data>/proxy_usage.json`, parsed (None while absent or partial).
    pub fn usage_file(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.data_dir().join("proxy_usage.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until `proxy_usage.json` satisfies `pred`; returns it.
    pub async fn wait_usage_file(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let r = crate::eventually(SETTLE, &format!("proxy_usage.json: {what}"), || async {
            self.usage_file().filter(|v| pred(v))
        })
        .await;
        r.with_context(|| format!("last proxy_usage.json: {:?}", self.usage_file()))
    }

    /// Every complete line of `<data>/proxy_inferences.jsonl`, parsed.
    pub fn inferences(&self) -> Vec<Value> {
        jsonl(&self.data_dir().join("proxy_inferences.jsonl"))
    }

    /// Every complete line of `<data>/proxy_ledger.jsonl` (the journal), parsed.
    pub fn journal(&self) -> Vec<Value> {
        jsonl(&self.data_dir().join("proxy_ledger.jsonl"))
    }

    /// Waits until `proxy_inferences.jsonl` holds a line satisfying `pred`; returns it.
    pub async fn wait_inference(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let r = crate::eventually(
            SETTLE,
            &format!("proxy_inferences.jsonl: {what}"),
            || async { self.inferences().into_iter().find(|v| pred(v)) },
        )
        .await;
        r.with_context(|| format!("inference lines: {:#?}", self.inferences()))
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The files the gateway writes into its certs directory before it is ready.
pub const CA_FILES: [&str; 3] = ["ca.crt", "ridges-ca.crt", "ca-bundle.crt"];

/// A running gateway proxy: the process, its usage port, and clients trusting its CA.
pub struct RunningGateway {
    /// The proxy process (log, metrics, signals).
    pub proxy: Proxy,
    /// The plain-HTTP usage listener, when the binary has one.
    pub usage_addr: Option<SocketAddr>,
    /// The per-Pod CA certificate the proxy wrote (`ca.crt`).
    pub ca_pem: Vec<u8>,
    /// The [`CA_FILES`] that did not exist yet when `/readyz` first answered 200.
    pub missing_at_ready: Vec<&'static str>,
    ca_file: PathBuf,
}

impl RunningGateway {
    /// Starts the proxy from `builder` (see [`Gateway::builder`], for tests that add flags) and
    /// waits for `/readyz` and the CA file.
    pub async fn start_from(builder: ProxyBuilder, gw: &Gateway) -> Result<RunningGateway> {
        RunningGateway::start(builder, gw).await
    }

    async fn start(builder: ProxyBuilder, gw: &Gateway) -> Result<RunningGateway> {
        let ca_file = gw.certs_dir().join("ca.crt");
        // A restarted proxy writes a new CA: never pick up the previous one.
        let _ = std::fs::remove_file(&ca_file);
        for name in CA_FILES {
            let _ = std::fs::remove_file(gw.certs_dir().join(name));
        }
        let proxy = builder.start().await?;
        // Which CA files were absent the moment `/readyz` first answered 200: a client started
        // on readiness must find them.
        let ready = crate::eventually(SETTLE, "/readyz 200", || async {
            matches!(proxy.admin_get("/readyz").await, Ok((200, _))).then(|| {
                CA_FILES
                    .into_iter()
                    .filter(|name| !gw.certs_dir().join(name).is_file())
                    .collect::<Vec<_>>()
            })
        })
        .await;
        let missing_at_ready = match ready {
            Ok(missing) => missing,
            Err(e) => bail!("{e:#}\n{}", proxy.describe()),
        };
        let written = crate::eventually(SETTLE, "ca.crt written", || async {
            ca_file.is_file().then_some(())
        })
        .await;
        if let Err(e) = written {
            bail!("{e:#}\n{}", proxy.describe());
        }
        let ca_pem = std::fs::read(&ca_file)?;
        let usage_addr = proxy
            .json_lines()
            .into_iter()
            .find(|v| v["message"] == "listening" && v["listener"] == "usage")
            .and_then(|v| v["addr"].as_str()?.parse().ok());
        Ok(RunningGateway {
            proxy,
            usage_addr,
            ca_pem,
            ca_file,
            missing_at_ready,
        })
    }

    /// A hyper client (HTTP/1.1; `.h2()` for h2) reaching `openrouter.ai` through the proxy.
    pub fn client(&self) -> LlmClient {
        LlmClient::new(self.proxy.sni_addr(), HOST, &self.ca_pem)
            .expect("the proxy's ca.crt holds a certificate")
    }

    /// curl POSTing to `https://openrouter.ai:<sni port>` through the proxy (HTTP/1.1).
    pub fn curl(&self) -> CurlPost {
        CurlPost::new(&self.ca_file, HOST, self.proxy.sni_addr())
    }

    /// `GET path` on the usage port: (status, body).
    pub async fn usage_get(&self, path: &str) -> Result<(u16, String)> {
        self.usage_request("GET", path).await
    }

    /// `method path` (no body) on the usage port: (status, body).
    pub async fn usage_request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let addr = self
            .usage_addr
            .context("the proxy logged no `listening` line for listener=usage")?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        crate::scrape::http_request(stream, addr, method, path)
            .await
            .context("usage port")
    }

    /// The sum of metric `name` over series matching `labels` (an error when none matches).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.proxy.metric(name, labels).await
    }

    /// The structured `request` log lines the gateway wrote.
    pub fn request_logs(&self) -> Vec<Value> {
        self.proxy
            .json_lines()
            .into_iter()
            .filter(|v| v["message"] == "request")
            .collect()
    }
}

/// A chat request body for `model` with `max_tokens` 100.
pub fn chat(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 100,
    })
}

/// The same, streaming.
pub fn chat_stream(model: &str) -> Value {
    let mut v = chat(model);
    v["stream"] = json!(true);
    v
}

/// Asserts an OpenRouter-shaped error body with `error.code == status`; returns the message.
pub fn error_message(status: u16, body: &Value) -> Result<String> {
    let code = body["error"]["code"].as_u64();
    let message = body["error"]["message"].as_str();
    match (code, message) {
        (Some(c), Some(m)) if c == u64::from(status) => Ok(m.to_string()),
        _ => bail!("expected {{\"error\":{{\"code\":{status},\"message\":..}}}}, got {body}"),
    }
}

/// The hex SHA-256 of `key` (for `api_key_sha256`).
pub fn sha256_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_renders_toml_with_the_root_first() {
        let spec = GatewaySpec::default()
            .set("intercept", "hosts", json!(["openrouter.ai"]))
            .set("", "version", 1)
            .set("intercept.budget", "max_cost_usd", "1.5")
            .set(
                "intercept.pricing",
                "fallback",
                json!({"prompt": "0", "completion": "1"}),
            )
            .set("intercept", "hosts", json!(["a", "b"]))
            .unset("intercept.budget", "nothing");
        assert_eq!(
            spec.to_toml(),
            "version = 1\n\n[intercept]\nhosts = [\"a\", \"b\"]\n\n[intercept.budget]\nmax_cost_usd = \"1.5\"\n\n[intercept.pricing]\nfallback = { \"completion\" = \"1\", \"prompt\" = \"0\" }\n"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
